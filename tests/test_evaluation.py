"""Tests of client.evaluation: confusion counts per subgroup computed at a site."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import confusion_matrix

from client.evaluation import (
    GROUP_KINDS,
    SiteCounts,
    age_band,
    confusion_counts,
    site_counts,
)


def _labels(seed: int, c: int, n: int = 150) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, c, n), rng.integers(0, c, n)


@pytest.mark.parametrize(("seed", "c"), [(0, 2), (1, 3), (2, 4), (3, 4)])
def test_confusion_counts_matches_sklearn(seed: int, c: int) -> None:
    y_true, y_pred = _labels(seed, c)
    cm = confusion_counts(y_true, y_pred, c)
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, confusion_matrix(y_true, y_pred, labels=range(c)))


def test_confusion_counts_keeps_absent_classes() -> None:
    cm = confusion_counts(np.array([0, 0, 1]), np.array([0, 1, 1]), 4)
    assert cm.shape == (4, 4)
    assert cm[2:].sum() == 0 and cm[:, 2:].sum() == 0


def test_confusion_counts_accepts_integral_floats_and_empty() -> None:
    cm = confusion_counts(np.array([0.0, 2.0]), np.array([2.0, 2.0]), 3)
    assert cm[0, 2] == 1 and cm[2, 2] == 1
    assert confusion_counts(np.array([], dtype=int), np.array([], dtype=int), 3).sum() == 0


@pytest.mark.parametrize(
    ("y_true", "y_pred", "match"),
    [
        ([0, 1, 3], [0, 1, 2], "y_true holds label 3"),
        ([0, 1, 2], [0, -1, 2], "y_pred holds label -1"),
        ([0, 1.5, 2], [0, 1, 2], "1.5"),
        ([0, 1], [0, 1, 2], "2 labels but y_pred has 3"),
    ],
)
def test_confusion_counts_bad_labels(y_true: list, y_pred: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        confusion_counts(np.array(y_true), np.array(y_pred), 3)


def test_age_band_edges() -> None:
    bands = age_band(np.array([39.9, 40, 55, 70, 70.1, np.nan]))
    assert bands.dtype == object
    assert bands.tolist() == ["<40", "40-70", "40-70", "40-70", ">70", None]


def test_site_counts_groups_and_missing_values() -> None:
    y_true, y_pred = _labels(5, 4, n=200)
    rng = np.random.default_rng(5)
    density = rng.choice(np.array(["A", "B", "C", "D"], dtype=object), size=200)
    density[:10] = None
    density[10:15] = ""
    density[15:20] = np.nan
    ages = rng.uniform(25, 85, size=200)
    ages[::7] = np.nan
    counts = site_counts(
        "VinDr", y_true, y_pred, 4, {"density": density, "age_band": age_band(ages)}
    )
    total = confusion_counts(y_true, y_pred, 4)
    np.testing.assert_array_equal(counts.total(), total)
    assert set(counts.counts) == {("site", "VinDr")} | {("density", g) for g in "ABCD"} | {
        ("age_band", b) for b in ("<40", "40-70", ">70")
    }
    observed = np.array([d not in (None, "") and d == d for d in density])
    density_sum = sum(counts.counts[("density", g)] for g in "ABCD")
    np.testing.assert_array_equal(
        density_sum, confusion_counts(y_true[observed], y_pred[observed], 4)
    )
    mask = density == "B"
    np.testing.assert_array_equal(
        counts.counts[("density", "B")], confusion_counts(y_true[mask], y_pred[mask], 4)
    )
    assert sum(cm.sum() for (kind, _), cm in counts.counts.items() if kind == "age_band") == (
        np.isfinite(ages).sum()
    )


def test_site_counts_fully_observed_groups_sum_to_total() -> None:
    y_true, y_pred = _labels(6, 3)
    density = np.random.default_rng(6).integers(0, 4, size=y_true.size)
    counts = site_counts("RSNA", y_true, y_pred, 3, {"density": density})
    groups = [cm for (kind, _), cm in counts.counts.items() if kind == "density"]
    np.testing.assert_array_equal(sum(groups), counts.total())
    assert {g for kind, g in counts.counts if kind == "density"} <= {"0", "1", "2", "3"}


def test_integral_float_groups_match_int_groups() -> None:
    # A density column read with NaNs becomes float; its groups must still say "2", not "2.0".
    y_true, y_pred = _labels(9, 3, n=4)
    as_float = site_counts("x", y_true, y_pred, 3, {"density": np.array([2.0, 2.0, np.nan, 1.0])})
    as_int = site_counts("x", y_true, y_pred, 3, {"density": np.array([2, 2, 0, 1])})
    assert {g for _, g in as_float.counts} == {"x", "1", "2"}
    np.testing.assert_array_equal(
        as_float.counts[("density", "2")], as_int.counts[("density", "2")]
    )


def test_site_counts_skips_absent_attribute_and_checks_lengths() -> None:
    y_true, y_pred = _labels(7, 3, n=10)
    counts = site_counts("MMD", y_true, y_pred, 3, {"density": None, "age_band": None})
    assert list(counts.counts) == [("site", "MMD")]
    with pytest.raises(ValueError, match=r"'density'.*9.*10"):
        site_counts("MMD", y_true, y_pred, 3, {"density": np.array(["A"] * 9)})
    with pytest.raises(ValueError, match="unknown group kind 'view'"):
        site_counts("MMD", y_true, y_pred, 3, {"view": np.array(["CC"] * 10)})
    with pytest.raises(ValueError, match="y_pred holds label 5"):
        site_counts("MMD", y_true, np.full(10, 5), 3, {})


def test_frame_round_trip() -> None:
    y_true, y_pred = _labels(8, 3, n=60)
    density = np.random.default_rng(8).choice(["A", "B", None], size=60)
    counts = site_counts("MIAS", y_true, y_pred, 3, {"density": density})
    frame = counts.to_frame()
    assert list(frame.columns) == ["site", "group_kind", "group", "true", "pred", "count"]
    assert len(frame) == len(counts.counts) * 9
    back = SiteCounts.from_frame(frame, 3)
    assert back.site == "MIAS" and back.n_classes == 3
    assert back.counts.keys() == counts.counts.keys()
    for key, cm in counts.counts.items():
        np.testing.assert_array_equal(back.counts[key], cm)
    sparse = SiteCounts.from_frame(frame[frame["count"] > 0], 3)
    np.testing.assert_array_equal(sparse.total(), counts.total())


def test_from_frame_rejects_bad_frames() -> None:
    frame = site_counts("a", np.array([0, 1]), np.array([1, 1]), 2, {}).to_frame()
    other = frame.assign(site="b")
    with pytest.raises(ValueError, match="exactly one site"):
        SiteCounts.from_frame(pd.concat([frame, other]), 2)
    with pytest.raises(ValueError, match="lacks columns"):
        SiteCounts.from_frame(frame.drop(columns="count"), 2)
    with pytest.raises(ValueError, match="duplicate"):
        SiteCounts.from_frame(pd.concat([frame, frame]), 2)
    with pytest.raises(ValueError, match="true holds label 1"):
        SiteCounts.from_frame(frame, 1)


def test_site_counts_validation_and_group_kinds() -> None:
    assert GROUP_KINDS == ("site", "density", "age_band")
    with pytest.raises(ValueError, match="shape"):
        SiteCounts("a", 3, {("site", "a"): np.zeros((2, 2))})
    with pytest.raises(KeyError, match="total"):
        SiteCounts("a", 2, {("density", "A"): np.zeros((2, 2))}).total()
