from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.linear_model import Ridge, RidgeClassifier
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import NearestCentroid

from sim.synthetic import PROFILES, scaled_counts, site_features, site_manifest


@pytest.fixture(scope="module")
def manifests(sites):
    return {s.name: site_manifest(s, 1.0, seed=0) for s in sites}


def test_counts_follow_table2_at_scale_1(sites, manifests):
    for site in sites:
        m = manifests[site.name]
        for task in ("diagnosis", "density"):
            got = m[task].value_counts().to_dict()
            want = {c: n for c, n in site.class_counts(task).items() if n > 0}
            assert got == want, (site.name, task)
        assert len(m) == max(site.scans, sum(site.class_counts("density").values()))


def test_counts_scale_down_proportionally(sites):
    for site in sites:
        m = site_manifest(site, 0.2, seed=0)
        want = scaled_counts(site.class_counts("density"), 0.2)
        assert m["density"].value_counts().to_dict() == {c: n for c, n in want.items() if n}
        for c, n in site.class_counts("density").items():
            assert abs(want[c] - 0.2 * n) <= 1


def test_patients_and_split(manifests):
    for m in manifests.values():
        sizes = m.groupby("patient_id").size()
        assert sizes.between(1, 4).all()
        assert m.groupby("patient_id")["split"].nunique().max() == 1  # no patient in both
        assert m["scan_id"].is_unique
        assert abs((m["split"] == "train").mean() - 0.7) < 0.05


def test_deterministic_for_a_seed(sites):
    a = site_manifest(sites[3], 0.5, seed=7)
    b = site_manifest(sites[3], 0.5, seed=7)
    pd.testing.assert_frame_equal(a, b)
    xa = site_features(a, 3, PROFILES["clip"], seed=7)
    np.testing.assert_array_equal(xa, site_features(b, 3, PROFILES["clip"], seed=7))
    assert not site_manifest(sites[3], 0.5, seed=8).equals(a)


def test_density_correlates_negatively_with_age(manifests):
    m = pd.concat([manifests["RSNA"], manifests["VinDr-Mammo"], manifests["LBMD"]])
    m = m[m["density"].notna()]
    rho, p = stats.spearmanr(m["density"].map("ABCD".index), m["age"])
    assert rho < -0.3 and p < 1e-6


def _features(sites, fm, scale=0.1):
    parts = []
    for i, s in enumerate(sites):
        m = site_manifest(s, scale, seed=0)
        parts.append((m, site_features(m, i, PROFILES[fm], seed=0)))
    m = pd.concat([p[0] for p in parts], ignore_index=True)
    return m, np.concatenate([p[1] for p in parts])


def test_sites_are_recognisable_strongest_for_mammoclip(sites):
    acc = {}
    for fm in ("mammoclip", "medclip"):
        m, x = _features(sites, fm)
        clf = NearestCentroid()  # sites form clusters around their centres (Fig. 1)
        acc[fm] = cross_val_score(clf, x, m["site"], cv=3).mean()
    assert acc["mammoclip"] > 0.95  # chance is ~0.1 (ten sites)
    assert acc["mammoclip"] > acc["medclip"]


def test_density_is_ordinal_and_label_signal_ordered_by_profile(sites):
    score = {}
    for fm in ("mammoclip", "medclip"):
        m, x = _features(sites, fm)
        keep = m["density"].notna().to_numpy()
        code = m.loc[keep, "density"].map("ABCD".index).to_numpy()
        train = (m.loc[keep, "split"] == "train").to_numpy()
        pred = Ridge(alpha=10.0).fit(x[keep][train], code[train]).predict(x[keep][~train])
        score[fm] = stats.spearmanr(pred, code[~train])[0]
        # ordinal: class means of the held-out prediction increase A < B < C < D
        means = [pred[code[~train] == c].mean() for c in range(4) if (code[~train] == c).any()]
        if fm == "mammoclip":
            assert np.all(np.diff(means) > 0)
    assert score["mammoclip"] > 0.5
    assert score["mammoclip"] > score["medclip"]


def test_label_signal_is_partly_site_specific(sites):
    """A probe trained on one site loses accuracy on another site's scans."""
    m, x = _features(sites, "mammoclip", scale=0.3)
    y = m["diagnosis"]
    a, b = (m["site"] == "CBIS-DDSM").to_numpy(), (m["site"] == "CDD-CESM").to_numpy()
    train = (m["split"] == "train").to_numpy()
    clf = RidgeClassifier(alpha=10.0).fit(x[a & train], y[a & train])
    internal = clf.score(x[a & ~train], y[a & ~train])
    external = clf.score(x[b & ~train], y[b & ~train])
    assert internal > external + 0.1
