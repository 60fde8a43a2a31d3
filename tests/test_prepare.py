"""``fedmammo prepare`` end to end: adapter → selection → image cache → prepared folder."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from cbis_real import write_release
from PIL import Image

from client.prepare import prepare_site, read_prepared
from client.sites.base import AdapterError
from sim.cli import main


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = write_release(tmp_path_factory.mktemp("cbis"))
    out = tmp_path_factory.mktemp("out") / "CBIS-DDSM"
    return root, out, prepare_site("CBIS-DDSM", root, out, workers=2, progress=False)


def test_real_cbis_dicoms_become_a_prepared_site(prepared):
    _, out, result = prepared
    manifest = read_prepared(out)
    assert len(manifest) == 8 and set(manifest["site"]) == {"CBIS-DDSM"}
    got = manifest.set_index(["patient_id", "laterality", "view"])
    # datasets.md §3: P_00173 benign both sides (density 2 → B); P_00820 left malignant, right benign (3 → C)
    for view in ("CC", "MLO"):
        assert got.loc[("P_00173", "L", view), ["diagnosis", "density"]].tolist() == ["benign", "B"]
        assert got.loc[("P_00173", "R", view), ["diagnosis", "density"]].tolist() == ["benign", "B"]
        assert got.loc[("P_00820", "L", view), ["diagnosis", "density"]].tolist() == ["malignant", "C"]
        assert got.loc[("P_00820", "R", view), ["diagnosis", "density"]].tolist() == ["benign", "C"]
    assert manifest["age"].isna().all()  # CBIS-DDSM has no age
    # two patients: one in train, one in test, each patient's scans together
    assert sorted(manifest.groupby("patient_id")["split"].agg(lambda s: s.nunique()).tolist()) == [1, 1]
    assert sorted(manifest.groupby("patient_id")["split"].first()) == ["test", "train"]
    for name in manifest["cache_file"]:
        image = np.asarray(Image.open(out / "images" / name))
        assert image.shape == (1520, 912) and image.dtype == np.uint8 and image.max() > 200
    assert len(result.quarantine) == 0
    assert not any(p.name.startswith(".") for p in out.parent.iterdir())


def test_a_truncated_dicom_is_quarantined_and_the_rest_prepared(prepared, tmp_path):
    root = tmp_path / "cbis"
    shutil.copytree(prepared[0], root, symlinks=True)
    victim = sorted(root.rglob("1-1.dcm"))[0]
    data = victim.read_bytes()
    victim.unlink()
    victim.write_bytes(data[: len(data) // 3])
    result = prepare_site("CBIS-DDSM", root, tmp_path / "out", workers=1, progress=False)
    assert len(result.quarantine) == 1 and result.quarantine["image_path"].iloc[0] == str(victim)
    manifest = pd.read_parquet(tmp_path / "out" / "manifest.parquet")
    assert manifest["cache_file"].notna().sum() == 7
    assert "quarantined 1" in result.summary()


def test_an_empty_site_is_one_clear_error_and_writes_nothing(tmp_path):
    root = write_release(tmp_path / "cbis")
    for dcm in root.rglob("*.dcm"):
        dcm.unlink()
    out = tmp_path / "out"
    with pytest.raises(AdapterError, match="mapped no scans"):
        prepare_site("CBIS-DDSM", root, out, progress=False)
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["cbis"]


def test_cli_dry_run_prints_the_mapping_and_writes_nothing(prepared, tmp_path, capsys):
    rc = main(["-q", "prepare", "--site", "cbis-ddsm", "--root", str(prepared[0]), "--dry-run"])
    err = capsys.readouterr().err
    assert rc == 0 and "8 scans would be preprocessed" in err and "mapped 8 scans" in err
    assert main(["-q", "prepare", "--site", "nosuch", "--root", str(tmp_path), "--dry-run"]) == 2
    assert "no site adapter 'nosuch'" in capsys.readouterr().err


FMS = ("mammoclip", "medclip", "gloria", "clip", "dinov2")


def test_real_dicoms_prepare_extract_probe_table(prepared, tmp_path):
    """Issue 6 end to end: prepare → extract (tiny FMs, real layouts) → store → Unified → table."""
    from client.extractors.demo_weights import write_demo_weights
    from client.feature_store import read_entry

    _, site_dir, _ = prepared
    store = tmp_path / "store"
    for fm in FMS:
        weights = write_demo_weights(fm, tmp_path / "weights" / fm, tiny=True, seed=1)
        argv = ["-q", "extract", "--manifest", str(site_dir / "manifest.parquet"), "--fm", fm,
                "--weights", str(weights), "--out", str(store), "--tiny", "--batch-size", "4"]
        assert main(argv) == 0
        entry = read_entry(store, fm, "CBIS-DDSM")
        assert entry.features.shape[0] == 8 and np.isfinite(entry.features).all()
        assert entry.features.std(axis=0).max() > 0  # the images differ, so do their features
        assert entry.provenance.weights_sha256 and entry.provenance.fm == fm
    config = tmp_path / "exp.toml"
    config.write_text(
        f'name = "cbis-real"\n[data]\nstore = "{store}"\n'
        f'[study]\nfms = {list(FMS)!r}\ntasks = ["diagnosis", "density"]\nindividual = false\n'
        'methods = ["unified"]\n[protocol]\nsearch = false\nepochs = 5\n'.replace("'", '"'))
    assert main(["-q", "pooled", "--config", str(config), "--out", str(tmp_path / "run")]) == 0
    metrics = pd.read_parquet(tmp_path / "run" / "metrics.parquet")
    f1 = metrics[(metrics["metric"] == "f1") & (metrics["site"] == "CBIS-DDSM")]
    assert set(f1["fm"]) == set(FMS) and f1["value"].between(0, 1).all()
    table = (tmp_path / "run" / "table3.md").read_text()
    assert "Unified" in table and all(fm in table.lower() for fm in FMS)
