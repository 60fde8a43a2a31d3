"""Performance and fairness metrics computed on the server from confusion counts alone.

Every function takes ``(C, C)`` count matrices (rows = true class, columns =
predicted class), as produced by :mod:`client.evaluation`, so nothing here needs
per-sample data. Rates for class ``k`` are one-vs-rest:

* ``TPR_k = P(Ŷ = k | Y = k)``  = ``cm[k, k] / cm[k, :].sum()``
* ``FPR_k = P(Ŷ = k | Y ≠ k)``  = ``(cm[:, k].sum() - cm[k, k]) / (N - cm[k, :].sum())``

and are NaN when their denominator is zero.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import numpy as np
from scipy import stats

if TYPE_CHECKING:
    from client.evaluation import SiteCounts


def _as_cm(cm: np.ndarray) -> np.ndarray:
    """``cm`` as an array of (C, C) counts, or a stack of them (..., C, C), validated."""
    arr = np.asarray(cm)
    if arr.ndim < 2 or arr.shape[-2] != arr.shape[-1]:
        raise ValueError(f"confusion matrix must be square (C, C), got shape {arr.shape}")
    if (arr < 0).any():
        raise ValueError("confusion matrix has negative counts")
    return arr


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Elementwise ``num / den`` with NaN where ``den == 0``, without warnings."""
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _diag(cm: np.ndarray) -> np.ndarray:
    return np.diagonal(cm, axis1=-2, axis2=-1)


# The rate helpers take one matrix or a stack (G, C, C): a round's history evaluates
# every group of every site, so one call per stack replaces one per group.
def _tpr_all(cm: np.ndarray) -> np.ndarray:
    cm = _as_cm(cm)
    return _ratio(_diag(cm), cm.sum(axis=-1))


def _fpr_all(cm: np.ndarray) -> np.ndarray:
    cm = _as_cm(cm)
    support = cm.sum(axis=-1)
    return _ratio(cm.sum(axis=-2) - _diag(cm), cm.sum(axis=(-2, -1))[..., None] - support)


def f1_per_class(cm: np.ndarray) -> np.ndarray:
    """Return one-vs-rest F1 of every class.

    Parameters
    ----------
    cm : np.ndarray
        ``(C, C)`` confusion counts, rows true, columns predicted.

    Returns
    -------
    np.ndarray
        Length ``C``; equals ``sklearn.metrics.f1_score(..., labels=range(C),
        average=None, zero_division=0)``: ``2 TP / (2 TP + FP + FN)``, 0 when that
        denominator is 0.

    """
    cm = _as_cm(cm)
    tp = _diag(cm).astype(float)
    den = (cm.sum(axis=-2) + cm.sum(axis=-1)).astype(float)  # = 2 TP + FP + FN
    out = np.zeros(den.shape)
    np.divide(2 * tp, den, out=out, where=den != 0)
    return out


def macro_f1(cm: np.ndarray) -> float:
    """Return macro-F1 over the classes present in ``y_true ∪ y_pred``.

    Parameters
    ----------
    cm : np.ndarray
        ``(C, C)`` confusion counts.

    Returns
    -------
    float
        Equals ``sklearn.metrics.f1_score(y_true, y_pred, average="macro",
        zero_division=0)``: a class with an empty row *and* column never occurs in
        either label vector, so sklearn leaves it out of the mean. NaN if ``cm`` is
        all zeros.

    """
    cm = _as_cm(cm)
    present = (cm.sum(axis=0) + cm.sum(axis=1)) > 0
    if not present.any():
        return math.nan
    return float(f1_per_class(cm)[present].mean())


def true_positive_rate(cm: np.ndarray, k: int) -> float:
    """Return ``P(Ŷ = k | Y = k)`` (NaN if class ``k`` has no samples).

    Parameters
    ----------
    cm : np.ndarray
        ``(C, C)`` confusion counts.
    k : int
        Class index.

    Returns
    -------
    float
        One-vs-rest true positive rate of class ``k``.

    """
    return float(_tpr_all(cm)[k])


def false_positive_rate(cm: np.ndarray, k: int) -> float:
    """Return ``P(Ŷ = k | Y ≠ k)`` (NaN if every sample is of class ``k``).

    Parameters
    ----------
    cm : np.ndarray
        ``(C, C)`` confusion counts.
    k : int
        Class index.

    Returns
    -------
    float
        One-vs-rest false positive rate of class ``k``.

    """
    return float(_fpr_all(cm)[k])


def equal_opportunity_difference(cm_g1: np.ndarray, cm_g2: np.ndarray, k: int) -> float:
    """Return the paper's EOD for class ``k``: ``TPR_k(g1) − TPR_k(g2)``.

    Parameters
    ----------
    cm_g1, cm_g2 : np.ndarray
        ``(C, C)`` confusion counts of groups ``g1`` and ``g2``.
    k : int
        Class index.

    Returns
    -------
    float
        Signed difference; 0 is fair, NaN if either TPR is undefined.

    Notes
    -----
    FairMedFM's ``"eod"`` is a different quantity: a binary equalized-odds *score*
    ``1 − ((max TPR − min TPR) + (max TNR − min TNR)) / 2`` over groups (1 = fair);
    its TPR gap is what it calls ``"eo"``. Do not compare the numbers directly.

    """
    return true_positive_rate(cm_g1, k) - true_positive_rate(cm_g2, k)


def average_odds_difference(cm_g1: np.ndarray, cm_g2: np.ndarray, k: int) -> float:
    """Return the paper's AOD for class ``k``: ``EOD + (FPR_k(g1) − FPR_k(g2))``.

    Parameters
    ----------
    cm_g1, cm_g2 : np.ndarray
        ``(C, C)`` confusion counts of groups ``g1`` and ``g2``.
    k : int
        Class index.

    Returns
    -------
    float
        Signed sum of the TPR and FPR differences; 0 is fair, range ``[-2, 2]``.

    Notes
    -----
    The paper's AOD has **no ½ factor**: it is the *sum* of the two differences,
    i.e. twice the usual AIF360 ``average_odds_difference``
    (``½ [(FPR₁ − FPR₂) + (TPR₁ − TPR₂)]``). We keep the paper's definition so
    values are comparable with its Fig. 2. FairMedFM's ``"eod"`` is yet another
    quantity (see :func:`equal_opportunity_difference`).

    """
    fpr_diff = false_positive_rate(cm_g1, k) - false_positive_rate(cm_g2, k)
    return equal_opportunity_difference(cm_g1, cm_g2, k) + fpr_diff


def aggregate_counts(sites: Iterable[SiteCounts]) -> dict[tuple[str, str], np.ndarray]:
    """Sum confusion counts with the same ``(group_kind, group)`` across sites.

    Parameters
    ----------
    sites : Iterable[SiteCounts]
        One entry per site; site names must be unique.

    Returns
    -------
    dict[tuple[str, str], np.ndarray]
        Summed counts, keys sorted; empty if ``sites`` is empty.

    Raises
    ------
    ValueError
        If sites disagree on ``n_classes`` or a site appears twice.

    """
    by_name: dict[str, SiteCounts] = {}
    for site in sites:
        if site.site in by_name:
            raise ValueError(f"site {site.site!r} appears more than once")
        by_name[site.site] = site
    if len({s.n_classes for s in by_name.values()}) > 1:
        found = {name: s.n_classes for name, s in sorted(by_name.items())}
        raise ValueError(f"sites disagree on n_classes: {found}")
    total: dict[tuple[str, str], np.ndarray] = {}
    for name in sorted(by_name):
        for key, cm in sorted(by_name[name].counts.items()):
            total[key] = total[key] + cm if key in total else np.array(cm, copy=True)
    return dict(sorted(total.items()))


def site_summary(f1_by_site: Mapping[str, float]) -> dict[str, float | int | str | None]:
    """Summarise per-site F1 as in the paper's Table 3.

    Parameters
    ----------
    f1_by_site : Mapping[str, float]
        Site name to F1; NaN (e.g. a site without the label) is ignored.

    Returns
    -------
    dict
        ``mean``, ``sd`` (sample SD, ddof=1; 0.0 for one site), ``worst`` (min),
        ``worst_site`` (first in name order on ties), ``n_sites`` (sites used) and
        ``n_missing`` (NaN sites). Statistics are NaN and ``worst_site`` None if no
        site has a value.

    """
    valid = {s: float(v) for s, v in sorted(f1_by_site.items()) if not math.isnan(v)}
    n_missing = len(f1_by_site) - len(valid)
    if not valid:
        return {
            "mean": math.nan,
            "sd": math.nan,
            "worst": math.nan,
            "worst_site": None,
            "n_sites": 0,
            "n_missing": n_missing,
        }
    values = np.fromiter(valid.values(), dtype=float)
    worst_site = min(valid, key=valid.__getitem__)
    return {
        "mean": float(values.mean()),
        "sd": float(values.std(ddof=1)) if values.size > 1 else 0.0,
        "worst": valid[worst_site],
        "worst_site": worst_site,
        "n_sites": int(values.size),
        "n_missing": n_missing,
    }


def wilcoxon_greater(a: Mapping[str, float], b: Mapping[str, float]) -> float:
    """Return the one-sided Wilcoxon signed-rank p-value for "a > b" across sites.

    Parameters
    ----------
    a, b : Mapping[str, float]
        Site name to a score (e.g. F1) for two methods.

    Returns
    -------
    float
        ``scipy.stats.wilcoxon(a, b, alternative="greater").pvalue`` paired on the
        sites where both have a non-NaN value; NaN with fewer than 2 such sites or
        when all differences are zero (the test is undefined).

    """
    paired = [s for s in sorted(set(a) & set(b)) if not (math.isnan(a[s]) or math.isnan(b[s]))]
    if len(paired) < 2:
        return math.nan
    x = np.array([a[s] for s in paired], dtype=float)
    y = np.array([b[s] for s in paired], dtype=float)
    if np.all(x == y):
        return math.nan
    return float(stats.wilcoxon(x, y, alternative="greater").pvalue)
