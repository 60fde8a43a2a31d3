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


def _frame(key: RunKey, rows: list[dict[str, object]]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["site", "group_kind", "group", "metric", "class", "value"])
    for name in ("mode", "fm", "task", "method", "trained_on"):
        df[name] = getattr(key, name)
    df["round"] = pd.array([key.round] * len(df), dtype="Int64")
    df["value"] = df["value"].astype(np.float64)
    return df.loc[:, list(METRIC_COLUMNS)]


def _f1_rows(site: str, cm: np.ndarray, classes: Sequence[str]) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = [
        {"site": site, "group_kind": "site", "group": site, "metric": "f1", "class": "macro",
         "value": macro_f1(cm)},
        {"site": site, "group_kind": "site", "group": site, "metric": "n", "class": "all",
         "value": float(cm.sum())},
    ]
    rows += [
        {"site": site, "group_kind": "site", "group": site, "metric": "f1", "class": c, "value": v}
        for c, v in zip(classes, f1_per_class(cm), strict=True)
    ]
    return rows


def _fairness_rows(site: str, kind: str, gm: GroupMetrics) -> list[dict[str, object]]:
    """Per-group TPR/FPR/support and EOD/AOD against the rest of the groups."""
    rows: list[dict[str, object]] = []
    tables = [(gm.by_group(), ("tpr", "fpr", "support"))]
    if len(gm.groups) > 1:
        tables.append((gm.difference_vs_rest(), ("eod", "aod")))
    for table, metrics in tables:
        for rec in table.to_dict("records"):
            rows += [{"site": site, "group_kind": kind, "group": rec["group"], "metric": m,
                      "class": rec["class"], "value": rec[m]} for m in metrics]
    return rows


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
    rows: list[dict[str, object]] = []
    kinds = [k for k in GROUP_KINDS[1:] if k != label_kind]
    for sc in sorted(sites, key=lambda s: s.site):
        rows += _f1_rows(sc.site, sc.total(), classes)
        for kind in kinds:
            groups = {g: cm for (k, g), cm in sc.counts.items() if k == kind}
            if groups:
                rows += _fairness_rows(sc.site, kind, GroupMetrics(groups, classes))
    pooled = aggregate_counts(sites)
    for kind in ("site", *kinds):
        groups = {g: cm for (k, g), cm in pooled.items() if k == kind}
        if groups:
            rows += _fairness_rows(ALL_SITES, kind, GroupMetrics(groups, classes))
    f1 = {sc.site: macro_f1(sc.total()) for sc in sites}
    summary = site_summary(f1)
    for name in ("mean", "sd", "worst"):
        rows.append({"site": ALL_SITES, "group_kind": "site", "group": ALL_SITES,
                     "metric": f"f1_{name}", "class": "macro", "value": summary[name]})
    return _frame(key, rows)


def final_round(history: pd.DataFrame) -> pd.DataFrame:
    """Rows of each (FM, task, method)'s last round: the federated model's result."""
    last = history.groupby(["fm", "task", "method"])["round"].transform("max")
    return history[history["round"] == last]


def empty_history() -> pd.DataFrame:
    """A history with no rows but the right columns."""
    return pd.DataFrame({c: pd.Series(dtype="object") for c in METRIC_COLUMNS})
