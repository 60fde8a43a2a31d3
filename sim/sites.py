"""The site table (``configs/sites.toml``, paper Table 2) as validated dataclasses."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from client.schema import TASKS
from sim.config import ConfigError, build, read_toml

#: The site table shipped with the project.
DEFAULT_SITES = Path(__file__).resolve().parent.parent / "configs" / "sites.toml"


@dataclass(frozen=True)
class Site:
    """One hospital dataset of Table 2.

    Label counts are scans per class; a ``None`` count table means the site lacks that
    label entirely. Healthy diagnosis scans are the remainder ``scans - benign - malignant``.
    """

    name: str
    country: str
    scans: int
    patients: int
    age_mean: float | None = None
    age_sd: float | None = None
    diagnosis: dict[str, int] | None = None
    diagnosis_train: dict[str, int] | None = None
    density: dict[str, int] | None = None
    density_train: dict[str, int] | None = None
    notes: str = field(default="")

    def __post_init__(self) -> None:
        for task in TASKS:
            for table in (getattr(self, task), getattr(self, f"{task}_train")):
                self._check_counts(task, table)

    def _check_counts(self, task: str, table: dict[str, int] | None) -> None:
        if table is None:
            return
        allowed = set(TASKS[task]) - ({"healthy"} if task == "diagnosis" else set())
        unknown = sorted(set(table) - allowed)
        if unknown:
            raise ValueError(f"site {self.name!r}: {task} class {unknown[0]!r} not in {sorted(allowed)}")
        if any(v < 0 for v in table.values()):
            raise ValueError(f"site {self.name!r}: negative {task} count")

    def has_label(self, task: str) -> bool:
        """Whether the site carries labels for ``task``."""
        return getattr(self, task) is not None

    def class_counts(self, task: str) -> dict[str, int]:
        """Scans per class of ``task`` (all classes, zeros included); empty if unlabelled."""
        table = getattr(self, task)
        if table is None:
            return {}
        counts = {c: int(table.get(c, 0)) for c in TASKS[task]}
        if task == "diagnosis":
            counts["healthy"] = max(self.scans - table.get("benign", 0) - table.get("malignant", 0), 0)
        return counts

    @property
    def has_age(self) -> bool:
        """Whether ages are recorded at this site."""
        return self.age_mean is not None and not math.isnan(self.age_mean)


def load_sites(path: str | Path = DEFAULT_SITES) -> tuple[Site, ...]:
    """Load and validate the site table.

    Parameters
    ----------
    path : str or Path
        A TOML file with one ``[[site]]`` table per site.

    Returns
    -------
    tuple of Site
        In file order.

    Raises
    ------
    ConfigError
        Naming the file and key for an unknown key, bad value or duplicate site.
    """
    doc = read_toml(path)
    extra = sorted(set(doc) - {"site"})
    if extra:
        raise ConfigError(f"{path}: unknown key {extra[0]!r}; expected only [[site]] tables")
    sites = tuple(build(Site, t, f"{path}:site[{i}]") for i, t in enumerate(doc.get("site", [])))
    names = [s.name for s in sites]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"{path}: site {dupes[0]!r} appears twice")
    if not sites:
        raise ConfigError(f"{path}: no [[site]] tables")
    return sites
