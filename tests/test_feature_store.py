from __future__ import annotations

import json

import numpy as np
import pytest

from client.feature_store import (
    FEATURES,
    PROVENANCE,
    FeatureStoreError,
    Provenance,
    list_entries,
    read_entry,
    write_entry,
)
from sim.synthetic import PROFILES, site_features, site_manifest


@pytest.fixture()
def entry(sites):
    m = site_manifest(sites[3], 0.2, seed=0)
    x = site_features(m, 3, PROFILES["dinov2"], seed=0)
    prov = Provenance(fm="dinov2", site=sites[3].name, dim=x.shape[1], n_scans=len(m),
                      weights_sha256="synthetic", generator="test")
    return m, x, prov


def test_round_trip(tmp_path, entry):
    m, x, prov = entry
    write_entry(tmp_path, m, x, prov)
    got = read_entry(tmp_path, "dinov2", prov.site)
    np.testing.assert_array_equal(got.features, x)
    assert got.manifest.equals(m.reset_index(drop=True))
    assert got.provenance == prov
    assert list_entries(tmp_path) == {"dinov2": [prov.site]}


def test_rewrite_replaces_and_leaves_no_temporaries(tmp_path, entry):
    m, x, prov = entry
    write_entry(tmp_path, m, x, prov)
    write_entry(tmp_path, m, x * 2, prov)
    np.testing.assert_array_equal(read_entry(tmp_path, "dinov2", prov.site).features, x * 2)
    assert [p.name for p in (tmp_path / "dinov2").iterdir()] == [prov.site]


def test_nan_features_refused_without_partial_output(tmp_path, entry):
    m, x, prov = entry
    x = x.copy()
    x[5, 3] = np.nan
    with pytest.raises(FeatureStoreError, match=r"NaN.*row 5"):
        write_entry(tmp_path, m, x, prov)
    assert not (tmp_path / "dinov2").exists() or not any((tmp_path / "dinov2").iterdir())


def test_dimension_disagreement_is_one_clear_error(tmp_path, entry):
    m, x, prov = entry
    folder = write_entry(tmp_path, m, x, prov)
    np.save(folder / FEATURES, x[:-1])
    with pytest.raises(FeatureStoreError, match=r"features\.npy.*rows but.*index\.parquet"):
        read_entry(tmp_path, "dinov2", prov.site)
    np.save(folder / FEATURES, x[:, :-1])
    with pytest.raises(FeatureStoreError, match=r"dimension 383.*says 384"):
        read_entry(tmp_path, "dinov2", prov.site)


def test_nan_on_disk_and_missing_parts_are_reported(tmp_path, entry):
    m, x, prov = entry
    folder = write_entry(tmp_path, m, x, prov)
    bad = x.copy()
    bad[2] = np.inf
    np.save(folder / FEATURES, bad)
    with pytest.raises(FeatureStoreError, match=r"features\.npy.*first row 2"):
        read_entry(tmp_path, "dinov2", prov.site)
    (folder / PROVENANCE).unlink()
    with pytest.raises(FeatureStoreError, match="provenance.json: missing"):
        read_entry(tmp_path, "dinov2", prov.site)


def test_provenance_is_plain_json(tmp_path, entry):
    m, x, prov = entry
    folder = write_entry(tmp_path, m, x, prov)
    doc = json.loads((folder / PROVENANCE).read_text())
    assert doc["weights_sha256"] == "synthetic" and doc["dim"] == 384 and doc["n_scans"] == len(m)
