"""The extraction loop: store entry, quarantine counting, resume, CLI, first use on a node."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from client.extract import PARTIAL, ExtractionError, ensure_features, extract_site, node_store
from client.extractors.base import load_extractor, randomize_
from client.feature_store import FeatureStoreError, read_entry
from sim.cli import main


def make_site(root, n: int = 7, size: tuple[int, int] = (152, 91), site: str = "SiteA", seed: int = 0):
    """A prepared site folder: manifest + 8-bit PNGs; row 1 quarantined, row 4 a corrupt file."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(n):
        name = None if i == 1 else f"s{i}.png"
        if name and i == 4:
            (root / "images" / name).write_bytes(b"\x89PNG broken")
        elif name:
            Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8)).save(root / "images" / name)
        rows.append({"site": site, "patient_id": f"p{i // 2}", "scan_id": f"scan{i}", "view": "CC",
                     "laterality": "L", "age": 40.0 + i, "density": "ABCD"[i % 4],
                     "diagnosis": ("healthy", "benign", "malignant")[i % 3],
                     "split": "test" if i % 3 == 0 else "train", "image_path": f"/src/{i}.dcm",
                     "cache_file": name})
    pd.DataFrame(rows).to_parquet(root / "manifest.parquet", index=False)
    return root / "manifest.parquet"


@pytest.fixture
def weights(tmp_path):
    """Tiny MedCLIP weights in MedCLIP's own layout, and the model they came from."""
    extractor = load_extractor("medclip", None, tiny=True)
    randomize_(extractor.model, std=0.05, seed=3)
    path = tmp_path / "pytorch_model.bin"
    torch.save({f"vision_model.model.{k}": v for k, v in extractor.model.state_dict().items()}, path)
    return path, extractor


def test_store_entry_holds_the_models_features(tmp_path, weights):
    path, model = weights
    manifest = make_site(tmp_path / "site")
    entry = extract_site(manifest, "medclip", path, tmp_path / "store", batch_size=3, tiny=True,
                         show_progress=False)
    got = read_entry(tmp_path / "store", "medclip", "SiteA")
    assert entry == tmp_path / "store" / "medclip" / "SiteA"
    assert got.manifest["scan_id"].tolist() == ["scan0", "scan2", "scan3", "scan5", "scan6"]
    images = [np.asarray(Image.open(tmp_path / "site" / "images" / f)) for f in got.manifest["cache_file"]]
    with torch.inference_mode():
        expected = model.encode(torch.stack([model.preprocess(i) for i in images])).numpy()
    np.testing.assert_allclose(got.features, expected, rtol=1e-5, atol=1e-5)
    prov = got.provenance
    assert prov.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (prov.extra["n_quarantined"], prov.extra["n_failed_images"]) == (1, 1)
    assert prov.extra["failed_scans"] == ["scan4"]
    assert torch.__version__.startswith(prov.extra["libraries"]["torch"])
    assert prov.extra["device"] == "cpu" and prov.dim == 512 and prov.n_scans == 5
    assert not (tmp_path / "store" / PARTIAL).exists()


class InterruptError(Exception):
    pass


def test_interrupted_run_resumes_to_the_same_features(tmp_path, weights):
    path, _ = weights
    manifest = make_site(tmp_path / "site", n=9)
    whole = extract_site(manifest, "medclip", path, tmp_path / "a", batch_size=2, tiny=True,
                         show_progress=False)

    def stop_after_two(index: int, total: int) -> None:
        if index == 1:
            raise InterruptError

    with pytest.raises(InterruptError):
        extract_site(manifest, "medclip", path, tmp_path / "b", batch_size=2, tiny=True,
                     show_progress=False, on_chunk=stop_after_two)
    partial = tmp_path / "b" / PARTIAL / "medclip" / "SiteA"
    assert sorted(p.name for p in partial.glob("chunk-*")) == ["chunk-00000.npz", "chunk-00001.npz"]
    assert not (tmp_path / "b" / "medclip").exists()
    with pytest.raises(FeatureStoreError):
        read_entry(tmp_path / "b", "medclip", "SiteA")
    seen: list[int] = []
    extract_site(manifest, "medclip", path, tmp_path / "b", batch_size=2, tiny=True, show_progress=False,
                 on_chunk=lambda i, n: seen.append(i))
    assert seen == [2, 3]  # 9 rows, 8 cached -> 4 chunks of 2: only the unfinished ones ran
    np.testing.assert_array_equal(np.load(whole / "features.npy"),
                                  np.load(tmp_path / "b" / "medclip" / "SiteA" / "features.npy"))
    assert not (tmp_path / "b" / PARTIAL).exists()


def test_changed_plan_discards_old_chunks(tmp_path, weights):
    path, _ = weights
    manifest = make_site(tmp_path / "site", n=6)
    with pytest.raises(InterruptError):
        extract_site(manifest, "medclip", path, tmp_path / "s", batch_size=2, tiny=True, show_progress=False,
                     on_chunk=lambda i, n: (_ for _ in ()).throw(InterruptError()))
    seen: list[int] = []
    extract_site(manifest, "medclip", path, tmp_path / "s", batch_size=3, tiny=True, show_progress=False,
                 on_chunk=lambda i, n: seen.append(i))
    assert seen == [0, 1]  # new batch size: chunk 0 recomputed, not reused from the old plan
    plan = json.loads((tmp_path / "s" / PARTIAL / "medclip" / "SiteA" / "plan.json").read_text()) \
        if (tmp_path / "s" / PARTIAL).exists() else None
    assert plan is None and read_entry(tmp_path / "s", "medclip", "SiteA").features.shape == (4, 512)


def test_manifest_errors_are_clear(tmp_path, weights):
    path, _ = weights
    manifest = make_site(tmp_path / "site")
    frame = pd.read_parquet(manifest)
    frame.loc[0, "site"] = "Other"
    frame.to_parquet(tmp_path / "two.parquet")
    with pytest.raises(ExtractionError, match=r"two\.parquet: holds sites \['Other', 'SiteA'\]"):
        extract_site(tmp_path / "two.parquet", "medclip", path, tmp_path / "s", tiny=True)
    frame.drop(columns="cache_file").to_parquet(tmp_path / "nocache.parquet")
    with pytest.raises(ExtractionError, match="no 'cache_file' column"):
        extract_site(tmp_path / "nocache.parquet", "medclip", path, tmp_path / "s", tiny=True)
    with pytest.raises(ValueError, match="device 'cuda' requested"):
        if not torch.cuda.is_available():
            extract_site(manifest, "medclip", path, tmp_path / "s", tiny=True, device="cuda")
        else:
            raise ValueError("device 'cuda' requested (GPU present: nothing to check)")


def test_cli_extract_full_size_pngs(tmp_path, weights, capsys):
    path, _ = weights
    manifest = make_site(tmp_path / "site", n=3, size=(1520, 912))
    argv = ["-q", "extract", "--manifest", str(manifest), "--fm", "medclip", "--weights", str(path),
            "--out", str(tmp_path / "store"), "--batch-size", "2", "--tiny", "--channels-last"]
    assert main(argv) == 0
    entry = read_entry(tmp_path / "store", "medclip", "SiteA")
    assert entry.features.shape == (2, 512) and entry.provenance.extra["channels_last"] is True
    missing = argv[:7] + [str(tmp_path / "nope.bin")] + argv[8:]
    assert main(missing) == 2
    err = capsys.readouterr().err
    assert "medclip:" in err and "nope.bin not found" in err and "pytorch_model.bin" in err


def test_node_extracts_on_first_use_only(tmp_path, weights, monkeypatch):
    path, _ = weights
    make_site(tmp_path / "site", n=4)
    config = {"site": "SiteA", "data-path": str(tmp_path / "site"), "weights": str(path), "tiny": True}
    store = node_store(config, str(tmp_path / "site"), "medclip", "SiteA")
    assert store == str(tmp_path / "site" / "features")
    assert read_entry(store, "medclip", "SiteA").features.shape == (3, 512)

    def fail(*args, **kwargs):
        raise AssertionError("extracted twice")

    monkeypatch.setattr("client.extract.extract_site", fail)
    assert node_store(config, str(tmp_path / "site"), "medclip", "SiteA") == store
    assert node_store({"site": "SiteA"}, "/some/store", "medclip", "SiteA") == "/some/store"
    with pytest.raises(ExtractionError, match="describes site 'SiteA'; expected 'SiteB'"):
        ensure_features(tmp_path / "site", "medclip", path, site="SiteB", tiny=True)


def test_client_app_reads_a_prepared_site_folder(tmp_path, weights):
    from types import SimpleNamespace

    from flwr.app import ConfigRecord

    from client import app

    path, _ = weights
    make_site(tmp_path / "site", n=12)
    node = {"site": "SiteA", "data-path": str(tmp_path / "site"), "weights-medclip": str(path), "tiny": True}
    cfg = ConfigRecord({"fm": "medclip", "task": "density"})
    site, data = app._data(SimpleNamespace(node_config=node), cfg)
    entry = read_entry(tmp_path / "site" / "features", "medclip", "SiteA")
    assert site == "SiteA" and data.train.x.shape[1] == 512
    assert len(data.train) + len(data.test_y) == len(entry.manifest) == 10  # 12 - quarantined - corrupt


def test_bf16_channels_last_run_agrees_with_fp32(tmp_path, weights):
    path, _ = weights
    manifest = make_site(tmp_path / "site", n=4)
    a = extract_site(manifest, "medclip", path, tmp_path / "a", tiny=True, show_progress=False)
    b = extract_site(manifest, "medclip", path, tmp_path / "b", tiny=True, show_progress=False,
                     bf16=True, channels_last=True)
    fa, fb = np.load(a / "features.npy"), np.load(b / "features.npy")
    cosine = (fa * fb).sum(1) / np.linalg.norm(fa, axis=1) / np.linalg.norm(fb, axis=1)
    assert cosine.min() > 0.99 and not np.array_equal(fa, fb)  # bf16 really ran, and stayed close
    assert read_entry(tmp_path / "b", "medclip", "SiteA").provenance.extra["dtype"] == "bfloat16-autocast"


def test_no_readable_image_is_an_error(tmp_path, weights):
    path, _ = weights
    manifest = make_site(tmp_path / "site", n=3)
    for png in (tmp_path / "site" / "images").glob("*.png"):
        png.write_bytes(b"garbage")
    with pytest.raises(ExtractionError, match="none of the 2 cached images could be read"):
        extract_site(manifest, "medclip", path, tmp_path / "s", tiny=True, show_progress=False)
    assert not (tmp_path / "s" / "medclip").exists()
