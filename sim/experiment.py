"""Experiment configs (``configs/experiments/*.toml``) as validated dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from client.schema import TASKS
from sim.config import ConfigError, build, read_toml
from sim.synthetic import PROFILES
from strategies.base import MethodConfig, get_method


@dataclass(frozen=True)
class DataConfig:
    """Where the features come from.

    ``store`` names an existing feature store; empty means "synthesize one under the
    output folder" at ``scale`` and ``seed`` (the simulator of `sim.synthetic`).
    """

    scale: float = 1.0
    seed: int = 0
    store: str = ""
    sites: str = ""


@dataclass(frozen=True)
class StudyConfig:
    """Which FMs, tasks and rows of Table 3 to produce."""

    fms: tuple[str, ...] = ("mammoclip",)
    tasks: tuple[str, ...] = ("diagnosis", "density")
    individual: bool = True
    individual_method: str = "unified"
    methods: tuple[str, ...] = ("unified",)


@dataclass(frozen=True)
class ProtocolConfig:
    """The training protocol; unset values keep each method's own defaults."""

    search: bool = True
    folds: int = 3
    seed: int = 0
    epochs: int | None = None
    search_epochs: int | None = None
    batch_sizes: tuple[int, ...] | None = None
    lrs: tuple[float, ...] | None = None


@dataclass(frozen=True)
class FederatedConfig:
    """The federated run of an experiment (``fedmammo simulate``).

    ``methods`` empty means the study's methods; ``engine`` is ``inprocess`` (no Ray)
    or ``ray`` (Flower's simulation engine). One round = ``local_epochs`` local epochs
    at every sampled site, or, when ``local_steps > 0``, that many minibatch updates at
    every site (so sites move the model in proportion to their size, as pooled SGD).
    A run checkpoints after a round when ``checkpoint_every_s`` seconds have passed since
    its last checkpoint, and after its last round (0: after every round).
    """

    rounds: int = 15
    local_epochs: int = 2
    local_steps: int = 0
    batch_size: int = 32
    lr: float = 1e-3
    fraction_train: float = 1.0
    fault_rate: float = 0.0
    engine: str = "inprocess"
    methods: tuple[str, ...] = ()
    checkpoint_every_s: float = 1.0

    def __post_init__(self) -> None:
        if self.checkpoint_every_s < 0:
            raise ValueError(f"checkpoint_every_s {self.checkpoint_every_s}: expected seconds >= 0")
        if self.engine not in ("inprocess", "ray"):
            raise ValueError(f"engine {self.engine!r}: expected 'inprocess' or 'ray'")
        if not 0 < self.fraction_train <= 1:
            raise ValueError(f"fraction_train {self.fraction_train}: expected a value in (0, 1]")


@dataclass(frozen=True)
class Experiment:
    """One experiment file."""

    name: str
    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    study: StudyConfig = field(default_factory=StudyConfig)
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    federated: FederatedConfig = field(default_factory=FederatedConfig)
    method: dict[str, dict[str, Any]] = field(default_factory=dict)

    def method_config(self, name: str) -> MethodConfig:
        """The config of method ``name``: its defaults, ``[method.<name>]``, then protocol."""
        cls = get_method(name).config_cls
        config = build(cls, self.method.get(name, {}), f"experiment {self.name!r}: [method.{name}]")
        p = self.protocol
        changes = {"epochs": p.epochs, "search_epochs": p.search_epochs,
                   "batch_sizes": p.batch_sizes, "lrs": p.lrs}
        return replace(config, **{k: v for k, v in changes.items() if v is not None})

    @property
    def federated_methods(self) -> tuple[str, ...]:
        """Methods of the federated run (the study's unless ``[federated] methods`` says)."""
        return self.federated.methods or self.study.methods


def load_experiment(path: str | Path) -> Experiment:
    """Load and validate an experiment file.

    Parameters
    ----------
    path : str or Path
        The TOML file.

    Returns
    -------
    Experiment
        The validated experiment.

    Raises
    ------
    ConfigError
        Naming the file and key for an unknown key, a wrong type, an unknown FM
        profile, task or method.
    """
    exp = build(Experiment, read_toml(path), str(path))
    for fm in exp.study.fms:
        if fm not in PROFILES and not exp.data.store:
            raise ConfigError(f"{path}: study.fms: unknown FM profile {fm!r}; expected {sorted(PROFILES)}")
    for task in exp.study.tasks:
        if task not in TASKS:
            raise ConfigError(f"{path}: study.tasks: unknown task {task!r}; expected {sorted(TASKS)}")
    for name in (*exp.study.methods, exp.study.individual_method, *exp.method, *exp.federated.methods):
        try:
            get_method(name)
        except KeyError as err:
            raise ConfigError(f"{path}: {err.args[0]}") from None
    for name in (*exp.study.methods, *exp.federated.methods):
        exp.method_config(name)  # validates [method.<name>] keys now, not mid-run
    return exp
