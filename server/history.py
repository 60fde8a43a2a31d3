"""The run history: tidy metric rows computed from clients' confusion counts.

Pooled and federated runs write the same schema (`METRIC_COLUMNS`), one row per value:
a pooled run leaves ``round`` empty, a federated run fills it after every round.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from client.evaluation import GROUP_KINDS, SiteCounts
from server.groups import GroupMetrics
from server.metrics import aggregate_counts, f1_per_class, macro_f1, site_summary

METRIC_COLUMNS: tuple[str, ...] = (
    "mode", "fm", "task", "method", "trained_on", "round",
    "site", "group_kind", "group", "metric", "class", "value",
)
#: ``site`` value of rows that pool every test site.
ALL_SITES = "all"


@dataclass(frozen=True)
class RunKey:
    """Identifies one trained model's evaluation in the history."""

    mode: str
    fm: str
    task: str
    method: str
    trained_on: str
    round: int | None = None


_FIELDS = ("site", "group_kind", "group", "metric", "class", "value")


class _Columns:
    """History rows gathered column-wise: one frame at the end instead of a dict per row."""

    def __init__(self) -> None:
        self.values: list[np.ndarray] = []
        # Labels as flat Python lists: a scalar label repeats by list multiplication,
        # cheaper than an array per call (a round adds a few hundred small blocks).
        self.labels: dict[str, list[object]] = {f: [] for f in _FIELDS[:-1]}

    def add(self, value: np.ndarray | float, **labels: object) -> None:
        """Rows of ``value`` (one per element); each label is a scalar or an array as long."""
        values = np.atleast_1d(np.asarray(value, dtype=np.float64))
        self.values.append(values)
        for name, column in self.labels.items():
            label = labels["class_" if name == "class" else name]
            column.extend([label] * values.size if np.isscalar(label) else label)

    def frame(self, key: RunKey) -> pd.DataFrame:
        """The rows with the run's key columns, in `METRIC_COLUMNS` order."""
        value = np.concatenate(self.values) if self.values else np.zeros(0)
        n = value.size
        data = {name: np.full(n, getattr(key, name), dtype=object)
                for name in ("mode", "fm", "task", "method", "trained_on")}
        data |= {f: np.array(column, dtype=object) if column else np.zeros(0, dtype=object)
                 for f, column in self.labels.items()}
        data["round"] = pd.array([key.round] * n, dtype="Int64")
        data["value"] = value
        return pd.DataFrame({c: data[c] for c in METRIC_COLUMNS})


def _f1_rows(out: _Columns, site: str, cm: np.ndarray, classes: Sequence[str]) -> None:
    out.add([macro_f1(cm), float(cm.sum())], site=site, group_kind="site", group=site,
            metric=["f1", "n"], class_=["macro", "all"])
    out.add(f1_per_class(cm), site=site, group_kind="site", group=site, metric="f1", class_=list(classes))


def _fairness_rows(out: _Columns, site: str, kind: str, gm: GroupMetrics) -> None:
    """Per-group TPR/FPR/support and EOD/AOD against the rest of the groups."""
    tables = [(gm.rate_arrays(), ("tpr", "fpr", "support"))]
    if len(gm.groups) > 1:
        tables.append((gm.vs_rest_arrays(), ("eod", "aod")))
    c = len(gm.class_names)
    groups = np.repeat(np.array(gm.groups, dtype=object), c)
    classes = np.tile(np.array(gm.class_names, dtype=object), len(gm.groups))
    for arrays, metrics in tables:
        k = len(metrics)
        # Record-major, metric-minor: the order of one row per (group, class, metric).
        out.add(np.stack([arrays[m] for m in metrics], axis=1).ravel(), site=site, group_kind=kind,
                group=np.repeat(groups, k), metric=np.tile(np.array(metrics, dtype=object), len(groups)),
                class_=np.repeat(classes, k))


def rows_from_counts(
    key: RunKey, sites: Sequence[SiteCounts], classes: Sequence[str], label_kind: str | None = None
) -> pd.DataFrame:
    """Turn one model's per-site counts into tidy history rows.

    Parameters
    ----------
    key : RunKey
        Mode, FM, task, method, training sites and round of the model.
    sites : sequence of SiteCounts
        The counts each test site sent.
    classes : sequence of str
        Class names of the task.
    label_kind : str, optional
        A group kind that *is* the label (density on the density task): it is skipped,
        since every group would hold a single true class.

    Returns
    -------
    pandas.DataFrame
        Rows with `METRIC_COLUMNS`: per site macro/per-class F1 and support; per site
        and subgroup kind TPR/FPR/EOD/AOD; pooled over sites (``site = "all"``) the
        same for subgroups and for sites as groups; and the across-site summary
        ``f1_mean``, ``f1_sd``, ``f1_worst``.
    """
    out = _Columns()
    kinds = [k for k in GROUP_KINDS[1:] if k != label_kind]
    for sc in sorted(sites, key=lambda s: s.site):
        _f1_rows(out, sc.site, sc.total(), classes)
        for kind in kinds:
            groups = {g: cm for (k, g), cm in sc.counts.items() if k == kind}
            if groups:
                _fairness_rows(out, sc.site, kind, GroupMetrics(groups, classes))
    pooled = aggregate_counts(sites)
    for kind in ("site", *kinds):
        groups = {g: cm for (k, g), cm in pooled.items() if k == kind}
        if groups:
            _fairness_rows(out, ALL_SITES, kind, GroupMetrics(groups, classes))
    summary = site_summary({sc.site: macro_f1(sc.total()) for sc in sites})
    out.add([summary[n] for n in ("mean", "sd", "worst")], site=ALL_SITES, group_kind="site",
            group=ALL_SITES, metric=["f1_mean", "f1_sd", "f1_worst"], class_="macro")
    return out.frame(key)


def site_rows(key: RunKey, rows: Sequence[dict[str, object]]) -> pd.DataFrame:
    """History rows of per-site scalars given as ``site``, ``metric``, ``value`` dicts.

    Train losses, missing sites and strategy state: the group is the site, the class ``all``.
    """
    out = _Columns()
    if rows:
        sites = [r["site"] for r in rows]
        out.add([float(r["value"]) for r in rows], site=sites, group_kind="site", group=sites,
                metric=[r["metric"] for r in rows], class_="all")
    return out.frame(key)


def final_round(history: pd.DataFrame) -> pd.DataFrame:
    """Rows of each (FM, task, method)'s last round: the federated model's result."""
    last = history.groupby(["fm", "task", "method"])["round"].transform("max")
    return history[history["round"] == last]


def empty_history() -> pd.DataFrame:
    """A history with no rows but the right columns."""
    return pd.DataFrame({c: pd.Series(dtype="object") for c in METRIC_COLUMNS})
