"""Per-group metrics from per-group confusion counts (fairlearn ``MetricFrame`` in spirit)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from server.metrics import (
    _as_cm,
    _fpr_all,
    _tpr_all,
    f1_per_class,
    macro_f1,
)


def _spread(values: np.ndarray) -> float:
    """Return ``max − min`` ignoring NaN; NaN if nothing is defined."""
    finite = values[~np.isnan(values)]
    return float(finite.max() - finite.min()) if finite.size else math.nan


class GroupMetrics:
    """Per-group metrics from per-group confusion counts, like fairlearn's ``MetricFrame``.

    Parameters
    ----------
    counts : Mapping[str, np.ndarray]
        Group name to ``(C, C)`` confusion counts. Groups are kept in sorted order
        so every result is deterministic.
    class_names : Sequence[str]
        Names of the ``C`` classes, in index order.

    """

    def __init__(self, counts: Mapping[str, np.ndarray], class_names: Sequence[str]) -> None:
        if not counts:
            raise ValueError("GroupMetrics needs at least one group")
        self.class_names: list[str] = [str(name) for name in class_names]
        c = len(self.class_names)
        self.counts: dict[str, np.ndarray] = {}
        for group in sorted(counts):
            cm = _as_cm(counts[group])
            if cm.shape != (c, c):
                raise ValueError(f"group {group!r} has shape {cm.shape}, expected {(c, c)}")
            self.counts[group] = cm

    @classmethod
    def from_counts(
        cls,
        counts: Mapping[tuple[str, str], np.ndarray],
        group_kind: str,
        class_names: Sequence[str],
    ) -> GroupMetrics:
        """Select one group kind from :func:`aggregate_counts` output.

        Parameters
        ----------
        counts : Mapping[tuple[str, str], np.ndarray]
            ``(group_kind, group) -> (C, C)`` counts.
        group_kind : str
            Kind to keep, e.g. ``"site"`` or ``"density"``.
        class_names : Sequence[str]
            Names of the ``C`` classes.

        Returns
        -------
        GroupMetrics
            Metrics over the groups of that kind.

        """
        selected = {group: cm for (kind, group), cm in counts.items() if kind == group_kind}
        if not selected:
            raise ValueError(f"no counts for group kind {group_kind!r}")
        return cls(selected, class_names)

    @property
    def groups(self) -> list[str]:
        """Group names, sorted."""
        return list(self.counts)

    @property
    def overall(self) -> np.ndarray:
        """Counts summed over all groups (in sorted order)."""
        return sum(self.counts.values(), np.zeros_like(next(iter(self.counts.values()))))

    def by_group(self) -> pd.DataFrame:
        """Return one row per (group, class) with support, tpr, fpr and f1.

        Returns
        -------
        pd.DataFrame
            Columns ``group, class, support, tpr, fpr, f1``; ``support`` is the number
            of samples whose true class is ``class``.

        """
        return self._per_group_class(**self.rate_arrays())

    def rate_arrays(self) -> dict[str, np.ndarray]:
        """`by_group`'s value columns as arrays, rows in (group, class) order (no frame)."""
        cms = self.stacked()
        return {"support": cms.sum(axis=-1).ravel(), "tpr": _tpr_all(cms).ravel(),
                "fpr": _fpr_all(cms).ravel(), "f1": f1_per_class(cms).ravel()}

    def stacked(self) -> np.ndarray:
        """The groups' counts as one (G, C, C) array, groups in sorted order."""
        return np.stack(list(self.counts.values()))

    def _per_group_class(self, **columns: np.ndarray) -> pd.DataFrame:
        """One frame with ``group, class`` and ``columns`` (built once: runs every round)."""
        n_classes = len(self.class_names)
        keys = {"group": np.repeat(np.array(self.groups, dtype=object), n_classes),
                "class": np.tile(np.array(self.class_names, dtype=object), len(self.groups))}
        return pd.DataFrame(keys | columns)

    def macro_f1(self) -> pd.Series:
        """Return macro-F1 per group, a ``Series`` indexed by group."""
        values = [macro_f1(cm) for cm in self.counts.values()]
        return pd.Series(values, index=pd.Index(self.groups, name="group"), name="macro_f1")

    def difference_vs_rest(self) -> pd.DataFrame:
        """Return EOD and AOD of each group against the pooled counts of all others.

        The paper defines EOD/AOD for a *pair* of groups; with ten sites that gives
        45 pairs per class. Comparing each group with the rest yields one number per
        group × class, which is what the paper's Fig. 2 heatmap (sites × density
        classes) shows. With a single group the rest is empty and the result is NaN.

        Returns
        -------
        pd.DataFrame
            Columns ``group, class, eod, aod``, one row per (group, class).

        """
        return self._per_group_class(**self.vs_rest_arrays())

    def vs_rest_arrays(self) -> dict[str, np.ndarray]:
        """`difference_vs_rest`'s value columns as arrays, rows in (group, class) order."""
        cms = self.stacked()
        rest = cms.sum(axis=0) - cms
        eod = _tpr_all(cms) - _tpr_all(rest)
        aod = eod + (_fpr_all(cms) - _fpr_all(rest))
        return {"eod": eod.ravel(), "aod": aod.ravel()}

    def max_gap(self) -> pd.DataFrame:
        """Return, per class, the largest pairwise EOD and AOD over the groups.

        ``eod_max_gap = max_g TPR − min_g TPR`` and ``aod_max_gap = max_g (TPR + FPR)
        − min_g (TPR + FPR)``, the largest values the paper's pairwise definitions
        reach. Groups where a rate is undefined are skipped.

        Returns
        -------
        pd.DataFrame
            Columns ``class, eod_max_gap, aod_max_gap``.

        """
        tpr = np.stack([_tpr_all(cm) for cm in self.counts.values()])
        odds = tpr + np.stack([_fpr_all(cm) for cm in self.counts.values()])
        return pd.DataFrame(
            {
                "class": self.class_names,
                "eod_max_gap": [_spread(tpr[:, k]) for k in range(tpr.shape[1])],
                "aod_max_gap": [_spread(odds[:, k]) for k in range(odds.shape[1])],
            }
        )
