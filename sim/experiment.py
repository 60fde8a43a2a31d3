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
class Experiment:
    """One experiment file."""

    name: str
    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    study: StudyConfig = field(default_factory=StudyConfig)
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    method: dict[str, dict[str, Any]] = field(default_factory=dict)

    def method_config(self, name: str) -> MethodConfig:
        """The config of method ``name``: its defaults, ``[method.<name>]``, then protocol."""
        cls = get_method(name).config_cls
        config = build(cls, self.method.get(name, {}), f"experiment {self.name!r}: [method.{name}]")
        p = self.protocol
        changes = {"epochs": p.epochs, "search_epochs": p.search_epochs,
                   "batch_sizes": p.batch_sizes, "lrs": p.lrs}
        return replace(config, **{k: v for k, v in changes.items() if v is not None})


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
    for name in (*exp.study.methods, exp.study.individual_method, *exp.method):
        try:
            get_method(name)
        except KeyError as err:
            raise ConfigError(f"{path}: {err.args[0]}") from None
    for name in exp.study.methods:
        exp.method_config(name)  # validates [method.<name>] keys now, not mid-run
    return exp
