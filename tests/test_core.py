from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F  # noqa: N812

from strategies.base import weighted_cross_entropy
from strategies.core import ArrayData, class_weights, cv_folds, fit, predict, search


def _toy(n=240, d=6, seed=0, sep=3.0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    centres = rng.normal(size=(3, d)) * sep
    x = (centres[y] + rng.normal(size=(n, d))).astype(np.float32)
    patient = np.repeat(np.arange(n // 2), 2)
    return ArrayData(x, y, np.zeros(n, dtype=np.int64), patient)


def test_class_weights_are_inverse_class_percentages():
    y = np.array([0, 0, 0, 1, 2, 2])
    # N / (C_present * n_c): 6/(3*3), 6/(3*1), 6/(3*2)
    np.testing.assert_allclose(class_weights(y, 4), [2 / 3, 2.0, 1.0, 0.0])


def test_weighted_cross_entropy_is_mean_over_n():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    y = torch.tensor([0, 1, 1])
    w = torch.tensor([0.5, 2.0])
    per = F.cross_entropy(logits, y, reduction="none")
    expected = (0.5 * per[0] + 2.0 * per[1] + 2.0 * per[2]) / 3
    assert torch.isclose(weighted_cross_entropy(logits, y, w), expected)


def test_probe_learns_and_is_reproducible():
    data = _toy()
    a = fit("unified", data, 3, 1, do_search=False, seed=3)
    b = fit("unified", data, 3, 1, do_search=False, seed=3)
    for pa, pb in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert (predict(a.model, data.x) == data.y).mean() > 0.9


def test_cv_folds_never_split_a_patient():
    data = _toy()
    folds = cv_folds(data, 3, seed=0)
    assert len(folds) == 3
    for tr, va in folds:
        assert not set(data.patient[tr]) & set(data.patient[va])


def test_search_covers_the_grid_and_picks_the_best_mean():
    data = _toy(n=120)
    from strategies.unified import UnifiedConfig

    cfg = UnifiedConfig(batch_sizes=(8, 32), lrs=(1e-2, 1e-5), search_epochs=3, epochs=5)
    hp, cv = search("unified", data, 3, 1, cfg, folds=3, seed=0)
    assert len(cv) == 2 * 2 * 3
    means = cv.groupby(["batch_size", "lr"])["accuracy"].mean()
    assert (hp.batch_size, hp.lr) == means.idxmax() and hp.epochs == 5
    assert hp.lr == 1e-2  # 1e-5 for 3 epochs cannot beat it on separable data


def test_group_index_and_concat_fill_missing_attributes():
    from strategies.core import concat

    a = ArrayData(np.zeros((2, 1), np.float32), np.array([0, 1]), np.array([0, 0]), np.array(["p", "q"]),
                  {"density": np.array([1, 3])})
    b = ArrayData(np.zeros((1, 1), np.float32), np.array([1]), np.array([1]), np.array(["r"]))
    both = concat([a, b])
    np.testing.assert_array_equal(both.group_index("density"), [1, 3, -1])
    np.testing.assert_array_equal(both.group_index("site"), [0, 0, 1])
    np.testing.assert_array_equal(both.group_index("age_band"), [-1, -1, -1])
