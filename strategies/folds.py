"""scikit-learn's `StratifiedGroupKFold`, with its per-group fold choice in plain floats.

sklearn assigns groups to folds greedily, one group at a time; for each it scores every
candidate fold with a few small numpy calls (``np.std``, ``np.mean``, ``np.isclose``),
whose dispatch dominates: 0.35 s for the 4,000 patients of a Table-2 pool, paid by every
fit of the paper's protocol. `FastStratifiedGroupKFold` overrides only that choice and
repeats numpy's arithmetic operation for operation in Python floats (same sums in the
same order, same divisions), so it returns sklearn's folds exactly; tests compare the
two. With 8 or more classes numpy's mean over classes sums pairwise, so those fall back
to sklearn's own choice.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

# np.isclose's defaults, which sklearn's tie-break uses.
_RTOL, _ATOL = 1e-5, 1e-8
# numpy sums a contiguous run of fewer than 8 numbers left to right; longer runs pairwise.
_SEQUENTIAL_SUM = 8


def _std_over_folds(columns: list[list[float]], k: int) -> list[float]:
    """Per class, numpy's population std over the ``k`` folds of ``columns[class][fold]``."""
    out = []
    for col in columns:
        total = 0.0
        for v in col:
            total += v
        mean = total / k
        sq = 0.0
        for v in col:
            d = v - mean
            sq += d * d
        out.append(math.sqrt(sq / k))
    return out


def best_fold(fold_counts: list[list[float]], class_counts: list[float], group_counts: list[float]) -> int:
    """Sklearn's ``_find_best_fold``: the fold whose class proportions stay most even.

    Parameters
    ----------
    fold_counts : list of list of float
        (k, C) labels per class already in each fold.
    class_counts : list of float
        (C,) labels per class in the whole set.
    group_counts : list of float
        (C,) labels per class of the group being placed.

    Returns
    -------
    int
        The fold with the least mean (over classes) std (over folds) of the share of each
        class, ties (``np.isclose``) going to the fold with fewer samples, then the first.
    """
    k, n_cls = len(fold_counts), len(class_counts)
    shares = [[fold_counts[j][c] / class_counts[c] for j in range(k)] for c in range(n_cls)]
    best, min_eval, min_samples = 0, math.inf, math.inf
    for i in range(k):
        columns = [list(col) for col in shares]
        for c in range(n_cls):
            columns[c][i] = (fold_counts[i][c] + group_counts[c]) / class_counts[c]
        total = 0.0
        for s in _std_over_folds(columns, k):
            total += s
        fold_eval = total / n_cls
        samples = sum(fold_counts[i])  # whole numbers: exact in any order
        tie = math.isfinite(min_eval) and abs(fold_eval - min_eval) <= _ATOL + _RTOL * abs(min_eval)
        if fold_eval < min_eval or (tie and samples < min_samples):
            best, min_eval, min_samples = i, fold_eval, samples
    return best


class FastStratifiedGroupKFold(StratifiedGroupKFold):
    """`sklearn.model_selection.StratifiedGroupKFold` with `best_fold` as its greedy step."""

    def _find_best_fold(self, y_counts_per_fold: np.ndarray, y_cnt: np.ndarray,
                        group_y_counts: np.ndarray) -> int:
        if len(y_cnt) >= _SEQUENTIAL_SUM:
            return super()._find_best_fold(y_counts_per_fold, y_cnt, group_y_counts)
        return best_fold(y_counts_per_fold.tolist(), y_cnt.tolist(), group_y_counts.tolist())
