"""`strategies.folds`: sklearn's StratifiedGroupKFold folds, exactly, faster."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.model_selection import StratifiedGroupKFold

from strategies.core import ArrayData
from strategies.folds import FastStratifiedGroupKFold, best_fold
from strategies.protocol import cv_folds


def _pool(seed: int, n: int, n_classes: int, max_group: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and patient ids: groups of 1..max_group rows, skewed class shares."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, max_group + 1, n)
    groups = np.repeat(np.arange(n), sizes)
    shares = rng.dirichlet(np.ones(n_classes)) * 0.8 + 0.2 / n_classes
    # Patients mostly carry one label, as a person's images mostly do.
    y = np.repeat(rng.choice(n_classes, n, p=shares), sizes)
    flip = rng.random(y.size) < 0.2
    y[flip] = rng.integers(0, n_classes, int(flip.sum()))
    return y, groups


@pytest.mark.parametrize("n_classes", [2, 3, 4, 5, 7, 9])
@pytest.mark.parametrize("n_splits", [2, 3, 5])
def test_folds_equal_sklearns(n_classes: int, n_splits: int) -> None:
    for seed in range(4):
        y, groups = _pool(seed, 300, n_classes, 4)
        for shuffle, state in ((True, seed), (False, None)):
            ours = FastStratifiedGroupKFold(n_splits=n_splits, shuffle=shuffle, random_state=state)
            ref = StratifiedGroupKFold(n_splits=n_splits, shuffle=shuffle, random_state=state)
            got = list(ours.split(np.zeros(y.size), y, groups))
            want = list(ref.split(np.zeros(y.size), y, groups))
            assert len(got) == len(want) == n_splits
            for (tr, va), (tr_ref, va_ref) in zip(got, want, strict=True):
                np.testing.assert_array_equal(tr, tr_ref)
                np.testing.assert_array_equal(va, va_ref)


def test_best_fold_by_hand() -> None:
    # Two classes of 10 each. Fold 0 holds 4 of class 0, fold 1 holds 4 of class 1, fold 2 is
    # empty. A group of 2 class-0 rows: in fold 1 or 2 it evens class 0's shares (0.4, 0.2, 0)
    # against fold 0's (0.6, 0, 0), and fold 2 leaves class 1's (0, 0.4, 0) alone; fold 1 and
    # fold 2 give the same score, so the tie goes to the emptier fold 2.
    folds = [[4.0, 0.0], [0.0, 4.0], [0.0, 0.0]]
    assert best_fold(folds, [10, 10], [2.0, 0.0]) == 2
    # With fold 2 as full as fold 1, the first of the tied folds wins.
    assert best_fold([[4.0, 0.0], [0.0, 4.0], [0.0, 4.0]], [10, 10], [2.0, 0.0]) == 1


def test_cv_folds_are_patient_disjoint_and_cover_every_row() -> None:
    y, groups = _pool(0, 500, 4, 3)
    data = ArrayData(np.zeros((y.size, 2), np.float32), y, np.zeros(y.size, np.int64), groups)
    splits = cv_folds(data, 3, 0)
    assert len(splits) == 3
    np.testing.assert_array_equal(np.sort(np.concatenate([va for _, va in splits])), np.arange(y.size))
    for tr, va in splits:
        assert not set(groups[tr]) & set(groups[va])
