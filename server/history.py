"""The run history: tidy metric rows computed from clients' confusion counts.

Pooled and federated runs write the same schema (`METRIC_COLUMNS`), one row per value:
a pooled run leaves ``round`` empty, a federated run fills it after every round.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from client.evaluation import GROUP_KINDS, SiteCounts
from server.metrics import _fpr_all, _tpr_all, aggregate_counts, f1_per_class, site_summary

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
#: (site, group kind, group → (C, C) counts): one block of groups compared with each other.
_Block = tuple[str, str, dict[str, np.ndarray]]


class _Columns:
    """History rows gathered column-wise: one frame at the end instead of a dict per row."""

    def __init__(self) -> None:
        self.values: list[np.ndarray] = []
        self.labels: dict[str, list[np.ndarray]] = {f: [] for f in _FIELDS[:-1]}

    def add(self, value: np.ndarray | Sequence[float], **labels: object) -> None:
        """Rows of ``value`` (one per element); each label is a string or a sequence as long."""
        values = np.atleast_1d(np.asarray(value, dtype=np.float64)).ravel()
        self.values.append(values)
        for name, parts in self.labels.items():
            label = labels["class_" if name == "class" else name]
            parts.append(np.full(values.size, label, dtype=object) if isinstance(label, str)
                         else np.asarray(label, dtype=object))


@dataclass(frozen=True)
class RoundRows:
    """One evaluated model's history rows, not yet a DataFrame.

    Building a DataFrame of string columns costs about a millisecond, more than computing
    the rows; a federated run keeps each round's rows in this form and builds one frame
    of many rounds (`history_frame`) when it writes them.
    """

    key: RunKey
    values: np.ndarray
    labels: dict[str, np.ndarray]

    @classmethod
    def of(cls, key: RunKey, columns: _Columns) -> RoundRows:
        """The rows gathered in ``columns``, concatenated, under ``key``."""
        values = np.concatenate(columns.values) if columns.values else np.zeros(0)
        labels = {f: np.concatenate(parts) if parts else np.zeros(0, dtype=object)
                  for f, parts in columns.labels.items()}
        return cls(key, values, labels)

    def value(self, metric: str) -> float:
        """The first value of ``metric`` (NaN if the rows have none)."""
        hit = np.flatnonzero(self.labels["metric"] == metric)
        return float(self.values[hit[0]]) if hit.size else float("nan")

    def frame(self) -> pd.DataFrame:
        """The rows as a DataFrame with `METRIC_COLUMNS`."""
        return history_frame([self])


def _flat(rows: Sequence[RoundRows]) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
    """Many rounds' rows as one set of columns: (string columns, round, round missing, value)."""
    sizes = [r.values.size for r in rows]
    strings = {name: np.repeat(np.array([getattr(r.key, name) for r in rows], dtype=object), sizes)
               for name in ("mode", "fm", "task", "method", "trained_on")}
    strings |= {f: np.concatenate([r.labels[f] for r in rows]) for f in _FIELDS[:-1]}
    missing = np.repeat([r.key.round is None for r in rows], sizes)
    rounds = np.repeat([r.key.round or 0 for r in rows], sizes).astype(np.int64)
    return strings, rounds, missing, np.concatenate([r.values for r in rows])


def _rows_frame(rows: Sequence[RoundRows]) -> pd.DataFrame:
    strings, rounds, missing, values = _flat(rows)
    data = strings | {"round": pd.arrays.IntegerArray(rounds, missing), "value": values}
    return pd.DataFrame({c: data[c] for c in METRIC_COLUMNS})


def rows_table(rows: Sequence[RoundRows]) -> pa.Table:
    """`RoundRows` as one Arrow table of `METRIC_COLUMNS` (strings, int64 round, float64 value).

    What a checkpoint writes (as Arrow IPC): Arrow takes the label arrays as they are, at
    a third of the cost of a DataFrame and its conversion. Reading it back gives
    `history_frame`'s columns once ``round`` is cast to ``Int64`` (`read_history_part`).
    """
    strings, rounds, missing, values = _flat(rows)
    columns = {k: pa.array(v, type=pa.string()) for k, v in strings.items()}
    columns |= {"round": pa.array(rounds, mask=missing), "value": pa.array(values, type=pa.float64())}
    return pa.table({c: columns[c] for c in METRIC_COLUMNS})


def read_history_part(path: str | Path) -> pd.DataFrame:
    """A history file (Arrow IPC from `rows_table`, or Parquet) as a history frame."""
    read = pd.read_parquet if Path(path).suffix == ".parquet" else pd.read_feather
    return read(path).astype({"round": "Int64"})


def history_frame(parts: Sequence[RoundRows | pd.DataFrame]) -> pd.DataFrame:
    """One DataFrame (`METRIC_COLUMNS`) of `RoundRows` and history frames, in their order.

    Consecutive `RoundRows` become one frame together (one conversion of their string
    columns, not one per round).
    """
    frames: list[pd.DataFrame] = []
    pending: list[RoundRows] = []
    for part in parts:
        if isinstance(part, RoundRows):
            pending.append(part)
            continue
        if pending:
            frames.append(_rows_frame(pending))
            pending = []
        frames.append(part)
    if pending:
        frames.append(_rows_frame(pending))
    if not frames:
        return empty_history()
    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)


def _f1_rows(out: _Columns, sites: Sequence[SiteCounts], classes: Sequence[str]) -> np.ndarray:
    """Per site: macro-F1, support, and per-class F1 (`server.metrics` on a stack of totals).

    Returns the sites' macro-F1 (NaN for a site without counts), as `macro_f1` gives it.
    """
    totals = np.stack([sc.total() for sc in sites])
    per_class = f1_per_class(totals)
    present = (totals.sum(axis=1) + totals.sum(axis=2)) > 0
    n_present = present.sum(axis=1)
    macro = np.full(len(sites), np.nan)
    np.divide((per_class * present).sum(axis=1), n_present, out=macro, where=n_present > 0)
    width = 2 + len(classes)
    values = np.column_stack([macro, totals.sum(axis=(1, 2)), per_class])
    names = np.repeat(np.array([sc.site for sc in sites], dtype=object), width)
    out.add(values, site=names, group_kind="site", group=names,
            metric=np.tile(np.array(["f1", "n"] + ["f1"] * len(classes), dtype=object), len(sites)),
            class_=np.tile(np.array(["macro", "all", *classes], dtype=object), len(sites)))
    return macro


def _blocks(sites: Sequence[SiteCounts], kinds: Sequence[str]) -> list[_Block]:
    """Every (site, group kind)'s groups, then the pooled ones (``site = "all"``, sites as groups)."""
    out: list[_Block] = []
    for sc in sites:
        by_kind: dict[str, dict[str, np.ndarray]] = {}
        for (kind, group), cm in sc.counts.items():
            by_kind.setdefault(kind, {})[group] = cm
        out += [(sc.site, kind, by_kind[kind]) for kind in kinds if kind in by_kind]
    pooled = aggregate_counts(sites)
    for kind in ("site", *kinds):
        groups = {g: cm for (k, g), cm in pooled.items() if k == kind}
        if groups:
            out.append((ALL_SITES, kind, groups))
    return out


def _fairness_rows(out: _Columns, blocks: list[_Block], classes: Sequence[str]) -> None:
    """Per group TPR/FPR/support, and EOD/AOD against the rest of its block's groups.

    All blocks' groups are one (N, C, C) stack, so each rate is one vectorised call
    (the same definitions as `server.groups.GroupMetrics`, which tests compare).
    """
    names = [(site, kind, g) for site, kind, groups in blocks for g in sorted(groups)]
    cms = np.stack([cm for _, _, groups in blocks for _, cm in sorted(groups.items())])
    sizes = np.array([len(groups) for _, _, groups in blocks])
    block = np.repeat(np.arange(len(blocks)), sizes)
    rest = np.add.reduceat(cms, np.r_[0, np.cumsum(sizes)[:-1]], axis=0)[block] - cms
    tpr, fpr = _tpr_all(cms), _fpr_all(cms)
    eod = tpr - _tpr_all(rest)
    tables = [(np.stack([tpr, fpr, cms.sum(axis=-1)], axis=-1), ("tpr", "fpr", "support"), slice(None)),
              (np.stack([eod, eod + fpr - _fpr_all(rest)], axis=-1), ("eod", "aod"), sizes[block] > 1)]
    labels = np.array(names, dtype=object)
    c = len(classes)
    for values, metrics, keep in tables:
        k, rows = len(metrics), labels[keep]
        per_row = np.repeat(rows, c * k, axis=0)
        out.add(values[keep], site=per_row[:, 0], group_kind=per_row[:, 1], group=per_row[:, 2],
                metric=np.tile(np.array(metrics, dtype=object), len(rows) * c),
                class_=np.tile(np.repeat(np.array(classes, dtype=object), k), len(rows)))


def rows_from_counts(
    key: RunKey, sites: Sequence[SiteCounts], classes: Sequence[str], label_kind: str | None = None,
    scalars: Sequence[dict[str, object]] = (),
) -> pd.DataFrame:
    """`round_rows` as a DataFrame."""
    return round_rows(key, sites, classes, label_kind, scalars).frame()


def round_rows(
    key: RunKey, sites: Sequence[SiteCounts], classes: Sequence[str], label_kind: str | None = None,
    scalars: Sequence[dict[str, object]] = (),
) -> RoundRows:
    """Turn one model's per-site counts into tidy history rows.

    Parameters
    ----------
    key : RunKey
        Mode, FM, task, method, training sites and round of the model.
    sites : sequence of SiteCounts
        The counts each test site sent (may be empty when ``scalars`` are given).
    classes : sequence of str
        Class names of the task.
    label_kind : str, optional
        A group kind that *is* the label (density on the density task): it is skipped,
        since every group would hold a single true class.
    scalars : sequence of dict, optional
        Per-site scalars as ``site``, ``metric``, ``value`` dicts (train losses, missing
        sites, strategy state): rows with the site as group and class ``all``, in the same
        frame (a federated round writes one frame).

    Returns
    -------
    RoundRows
        Rows with `METRIC_COLUMNS`: per site macro/per-class F1 and support; per site
        and subgroup kind TPR/FPR/EOD/AOD; pooled over sites (``site = "all"``) the
        same for subgroups and for sites as groups; and the across-site summary
        ``f1_mean``, ``f1_sd``, ``f1_worst``.
    """
    out, classes = _Columns(), [str(c) for c in classes]
    if sites:
        ordered = sorted(sites, key=lambda s: s.site)
        macro = _f1_rows(out, ordered, classes)
        _fairness_rows(out, _blocks(ordered, [k for k in GROUP_KINDS[1:] if k != label_kind]), classes)
        summary = site_summary({sc.site: float(f1) for sc, f1 in zip(ordered, macro, strict=True)})
        out.add([summary[n] for n in ("mean", "sd", "worst")], site=ALL_SITES, group_kind="site",
                group=ALL_SITES, metric=["f1_mean", "f1_sd", "f1_worst"], class_="macro")
    _scalar_rows(out, scalars)
    return RoundRows.of(key, out)


def _scalar_rows(out: _Columns, rows: Sequence[dict[str, object]]) -> None:
    """Rows of per-site scalars: the group is the site, the class ``all``."""
    if rows:
        sites = [r["site"] for r in rows]
        out.add([float(r["value"]) for r in rows], site=sites, group_kind="site", group=sites,
                metric=[r["metric"] for r in rows], class_="all")


def final_round(history: pd.DataFrame) -> pd.DataFrame:
    """Rows of each (FM, task, method)'s last round: the federated model's result."""
    last = history.groupby(["fm", "task", "method"])["round"].transform("max")
    return history[history["round"] == last]


def empty_history() -> pd.DataFrame:
    """A history with no rows but the right columns."""
    return pd.DataFrame({c: pd.Series(dtype="object") for c in METRIC_COLUMNS})
