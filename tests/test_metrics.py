"""Oracle tests of server.metrics against scikit-learn, fairlearn, scipy and by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import MetricFrame, false_positive_rate, true_positive_rate
from scipy import stats
from sklearn.metrics import f1_score

from client.evaluation import SiteCounts, confusion_counts, site_counts
from server import metrics as m
from server.groups import GroupMetrics

CASES = [(seed, c) for seed in range(4) for c in (3, 4)]


def _random_labels(seed: int, c: int, n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, c, n)
    # Mostly correct predictions so that F1 values are not all near chance.
    y_pred = np.where(rng.random(n) < 0.6, y_true, rng.integers(0, c, n))
    return y_true, y_pred


def _sklearn_f1(y_true: np.ndarray, y_pred: np.ndarray, c: int) -> tuple[np.ndarray, float]:
    per_class = f1_score(y_true, y_pred, labels=list(range(c)), average=None, zero_division=0)
    return per_class, f1_score(y_true, y_pred, average="macro", zero_division=0)


@pytest.mark.parametrize(("seed", "c"), CASES)
def test_f1_matches_sklearn(seed: int, c: int) -> None:
    y_true, y_pred = _random_labels(seed, c)
    cm = confusion_counts(y_true, y_pred, c)
    per_class, macro = _sklearn_f1(y_true, y_pred, c)
    np.testing.assert_allclose(m.f1_per_class(cm), per_class, rtol=0, atol=1e-9)
    assert m.macro_f1(cm) == pytest.approx(macro, abs=1e-9)


@pytest.mark.parametrize("c", [3, 4])
def test_f1_class_predicted_but_absent_from_truth(c: int) -> None:
    y_true, y_pred = _random_labels(7, c)
    y_true = np.where(y_true == c - 1, 0, y_true)  # class c-1 never true, still predicted
    assert (y_pred == c - 1).any()
    cm = confusion_counts(y_true, y_pred, c)
    per_class, macro = _sklearn_f1(y_true, y_pred, c)
    np.testing.assert_allclose(m.f1_per_class(cm), per_class, rtol=0, atol=1e-9)
    assert m.macro_f1(cm) == pytest.approx(macro, abs=1e-9)


@pytest.mark.parametrize("c", [3, 4])
def test_f1_class_absent_from_both(c: int) -> None:
    y_true, y_pred = _random_labels(11, c)
    y_true = np.where(y_true == 1, 0, y_true)
    y_pred = np.where(y_pred == 1, 2, y_pred)
    cm = confusion_counts(y_true, y_pred, c)
    per_class, macro = _sklearn_f1(y_true, y_pred, c)
    np.testing.assert_allclose(m.f1_per_class(cm), per_class, rtol=0, atol=1e-9)
    # sklearn averages over the c-1 present labels, not over all c.
    assert m.macro_f1(cm) == pytest.approx(macro, abs=1e-9)
    assert m.macro_f1(cm) != pytest.approx(per_class.mean(), abs=1e-9)


def test_macro_f1_all_zero_is_nan() -> None:
    assert math.isnan(m.macro_f1(np.zeros((3, 3), dtype=np.int64)))


@pytest.mark.parametrize(("seed", "c"), CASES)
def test_rates_match_fairlearn_metricframe(seed: int, c: int) -> None:
    y_true, y_pred = _random_labels(seed, c, n=300)
    groups = np.random.default_rng(seed + 100).choice(["g1", "g2", "g3"], size=y_true.size)
    counts = {
        g: confusion_counts(y_true[groups == g], y_pred[groups == g], c) for g in "g1 g2 g3".split()
    }
    gm = (
        GroupMetrics(counts, [f"c{k}" for k in range(c)]).by_group().set_index(["group", "class"])
    )
    for k in range(c):
        frame = MetricFrame(
            metrics={"tpr": true_positive_rate, "fpr": false_positive_rate},
            y_true=(y_true == k).astype(int),
            y_pred=(y_pred == k).astype(int),
            sensitive_features=groups,
        )
        for g, row in frame.by_group.iterrows():
            assert m.true_positive_rate(counts[g], k) == pytest.approx(row["tpr"], abs=1e-9)
            assert m.false_positive_rate(counts[g], k) == pytest.approx(row["fpr"], abs=1e-9)
            assert gm.loc[(g, f"c{k}"), "tpr"] == pytest.approx(row["tpr"], abs=1e-9)
            assert gm.loc[(g, f"c{k}"), "fpr"] == pytest.approx(row["fpr"], abs=1e-9)


def test_rates_undefined_are_nan() -> None:
    cm = np.array([[3, 1], [0, 0]])  # no sample of class 1
    assert math.isnan(m.true_positive_rate(cm, 1))
    assert math.isnan(m.false_positive_rate(cm, 0))
    assert m.false_positive_rate(cm, 1) == pytest.approx(0.25)


# Tiny two-group example, three classes (rows true, columns predicted).
G1 = np.array([[8, 1, 1], [2, 6, 2], [0, 0, 5]])  # N = 25
G2 = np.array([[4, 4, 2], [1, 3, 1], [1, 1, 3]])  # N = 20


def test_eod_aod_hand_computed() -> None:
    # Class 0: TPR g1 = 8/10, g2 = 4/10. FPR g1 = (2+0)/15, g2 = (1+1)/10.
    assert m.equal_opportunity_difference(G1, G2, 0) == pytest.approx(0.8 - 0.4)
    assert m.average_odds_difference(G1, G2, 0) == pytest.approx((0.8 - 0.4) + (2 / 15 - 0.2))
    # Class 2: TPR g1 = 5/5, g2 = 3/5. FPR g1 = (1+2)/20, g2 = (2+1)/15.
    assert m.equal_opportunity_difference(G1, G2, 2) == pytest.approx(1.0 - 0.6)
    assert m.average_odds_difference(G1, G2, 2) == pytest.approx(0.4 + (3 / 20 - 3 / 15))
    # No 1/2 factor: AOD is the plain sum of the two differences.
    assert m.average_odds_difference(G2, G1, 0) == pytest.approx(-(0.4 + 2 / 15 - 0.2))


@pytest.mark.parametrize("scale", [1, 3, 10])
def test_fair_predictor_is_exactly_zero(scale: int) -> None:
    for k in range(3):
        assert m.equal_opportunity_difference(G1, G1 * scale, k) == 0.0
        assert m.average_odds_difference(G1, G1 * scale, k) == 0.0
    gaps = GroupMetrics({"a": G1, "b": 2 * G1, "c": 5 * G1}, ["A", "B", "C"]).max_gap()
    assert (gaps[["eod_max_gap", "aod_max_gap"]].to_numpy() == 0.0).all()


def test_difference_vs_rest_matches_hand_rest() -> None:
    g3 = np.array([[2, 0, 0], [0, 2, 0], [1, 0, 0]])
    counts = {"s2": G2, "s1": G1, "s3": g3}
    diff = GroupMetrics(counts, ["A", "B", "C"]).difference_vs_rest()
    assert list(diff.columns) == ["group", "class", "eod", "aod"]
    assert list(diff["group"].unique()) == ["s1", "s2", "s3"]
    for group, cm in counts.items():
        rest = sum(other for name, other in counts.items() if name != group)
        for k, cls in enumerate("ABC"):
            row = diff[(diff["group"] == group) & (diff["class"] == cls)].iloc[0]
            assert row["eod"] == pytest.approx(m.equal_opportunity_difference(cm, rest, k))
            assert row["aod"] == pytest.approx(m.average_odds_difference(cm, rest, k))


def test_group_metrics_frames() -> None:
    gm = GroupMetrics({"b": G2, "a": G1}, ["A", "B", "C"])
    assert gm.groups == ["a", "b"]
    np.testing.assert_array_equal(gm.overall, G1 + G2)
    frame = gm.by_group()
    assert list(frame.columns) == ["group", "class", "support", "tpr", "fpr", "f1"]
    assert frame["support"].tolist() == [10, 10, 5, 10, 5, 5]
    f1 = gm.macro_f1()
    assert isinstance(f1, pd.Series)
    assert f1.to_dict() == {"a": m.macro_f1(G1), "b": m.macro_f1(G2)}
    gaps = gm.max_gap().set_index("class")
    assert gaps.loc["A", "eod_max_gap"] == pytest.approx(0.4)
    assert gaps.loc["A", "aod_max_gap"] == pytest.approx(abs(0.4 + 2 / 15 - 0.2))


def test_single_group_vs_rest_is_nan() -> None:
    diff = GroupMetrics({"only": G1}, ["A", "B", "C"]).difference_vs_rest()
    assert diff[["eod", "aod"]].isna().all().all()


def test_group_metrics_rejects_bad_shape() -> None:
    with pytest.raises(ValueError, match="'a'"):
        GroupMetrics({"a": np.zeros((2, 2))}, ["A", "B", "C"])


def _site(name: str, seed: int, c: int = 3) -> SiteCounts:
    y_true, y_pred = _random_labels(seed, c, n=120)
    density = np.random.default_rng(seed).choice(["A", "B", "C", None], size=y_true.size)
    return site_counts(name, y_true, y_pred, c, {"density": density, "age_band": None})


def test_aggregate_counts_sums_and_is_order_independent() -> None:
    sites = [_site("s1", 1), _site("s2", 2), _site("s3", 3)]
    total = m.aggregate_counts(sites)
    for key in {k for s in sites for k in s.counts}:
        expected = sum(s.counts[key] for s in sites if key in s.counts)
        np.testing.assert_array_equal(total[key], expected)
    reversed_total = m.aggregate_counts(reversed(sites))
    assert list(reversed_total) == list(total) == sorted(total)
    for key in total:
        np.testing.assert_array_equal(reversed_total[key], total[key])
    density_sum = sum(total[("density", g)] for g in "ABC")
    site_sum = sum(total[("site", s)] for s in ("s1", "s2", "s3"))
    assert density_sum.sum() < site_sum.sum()  # None densities are left out


def test_aggregate_counts_rejects_mismatch() -> None:
    with pytest.raises(ValueError, match="n_classes"):
        m.aggregate_counts([_site("s1", 1, c=3), _site("s2", 2, c=4)])
    with pytest.raises(ValueError, match="more than once"):
        m.aggregate_counts([_site("s1", 1), _site("s1", 2)])


def test_site_summary_hand_example() -> None:
    summary = m.site_summary({"b": 0.6, "a": 0.8, "c": 0.4, "d": math.nan})
    assert summary["mean"] == pytest.approx(0.6)
    assert summary["sd"] == pytest.approx(0.2)  # sqrt(((0.2)^2 + 0 + (0.2)^2) / 2)
    assert summary["worst"] == 0.4
    assert summary["worst_site"] == "c"
    assert (summary["n_sites"], summary["n_missing"]) == (3, 1)
    single = m.site_summary({"a": 0.7})
    assert (single["mean"], single["sd"], single["worst_site"]) == (0.7, 0.0, "a")


def test_wilcoxon_greater_matches_scipy() -> None:
    a = {"s1": 0.71, "s2": 0.65, "s3": 0.80, "s4": 0.55, "s5": 0.62, "s6": 0.90, "x": 0.5}
    b = {"s1": 0.60, "s2": 0.66, "s3": 0.70, "s4": 0.50, "s5": 0.40, "s6": 0.81, "y": 0.1}
    sites = ["s1", "s2", "s3", "s4", "s5", "s6"]
    expected = stats.wilcoxon(
        [a[s] for s in sites], [b[s] for s in sites], alternative="greater"
    ).pvalue
    assert m.wilcoxon_greater(a, b) == pytest.approx(expected, abs=1e-12)
    assert m.wilcoxon_greater(a, b) < m.wilcoxon_greater(b, a)


def test_wilcoxon_greater_degenerate_cases_are_nan() -> None:
    assert math.isnan(m.wilcoxon_greater({"s1": 0.9}, {"s1": 0.1}))
    assert math.isnan(m.wilcoxon_greater({"s1": 0.5, "s2": 0.4}, {"s1": 0.5, "s2": 0.4}))
    assert math.isnan(m.wilcoxon_greater({"s1": 0.9, "s2": math.nan}, {"s1": 0.1, "s2": 0.2}))


def test_group_metrics_from_aggregated_counts() -> None:
    total = m.aggregate_counts([_site("s2", 2), _site("s1", 1)])
    gm = GroupMetrics.from_counts(total, "site", ["A", "B", "C"])
    assert gm.groups == ["s1", "s2"]
    np.testing.assert_array_equal(gm.overall, total[("site", "s1")] + total[("site", "s2")])
    assert GroupMetrics.from_counts(total, "density", ["A", "B", "C"]).groups == ["A", "B", "C"]
    with pytest.raises(ValueError, match="'age_band'"):
        GroupMetrics.from_counts(total, "age_band", ["A", "B", "C"])


def test_rates_of_a_stack_equal_the_rates_of_each_matrix() -> None:
    # The history evaluates a (groups, C, C) stack in one call; each slice must match
    # the single-matrix result (sklearn's F1 oracle covers the single matrix above).
    rng = np.random.default_rng(7)
    stack = rng.integers(0, 6, size=(5, 4, 4))
    stack[1, 2, :] = 0  # a class absent from truth: NaN TPR
    stack[3] = 0  # an empty group: NaN rates, zero F1
    for fn in (m._tpr_all, m._fpr_all, m.f1_per_class):
        together = fn(stack)
        for g in range(len(stack)):
            np.testing.assert_array_equal(together[g], fn(stack[g]))
    y = rng.integers(0, 4, 200)
    p = rng.integers(0, 4, 200)
    cm = confusion_counts(y, p, 4)
    np.testing.assert_allclose(m.f1_per_class(np.stack([cm, cm]))[1],
                               f1_score(y, p, labels=range(4), average=None, zero_division=0))
