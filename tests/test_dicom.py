"""read_image: DICOM round trips in every transfer syntax we can encode, the display pipeline, Pillow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from client.dicom import ImageError, SkipImage, read_image

RNG = np.random.default_rng(7)
#: 12-bit content with structure and noise, both extremes present.
ARRAY = np.clip(np.add.outer(np.arange(48) * 50, np.arange(40) * 40) + RNG.integers(0, 300, (48, 40)),
                0, 4095).astype(np.uint16)
ARRAY[0, 0], ARRAY[-1, -1] = 0, 4095


def make_dicom(path: Path, arr: np.ndarray = ARRAY, syntax: str = ExplicitVRLittleEndian,
               photometric: str = "MONOCHROME2", bits: int = 12, **attrs: object) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "MG"
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    ds.PixelData = arr.astype(np.uint16).tobytes()
    for key, value in attrs.items():
        setattr(ds, key, value)
    if syntax == JPEGLosslessSV1:
        ds.PixelData = encapsulate([jpeg_lossless(arr, bits)])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    elif syntax != ExplicitVRLittleEndian:
        ds.compress(syntax, arr)
    ds.save_as(path, enforce_file_format=True)
    return path


def jpeg_lossless(arr: np.ndarray, precision: int) -> bytes:
    """A minimal ITU-T T.81 lossless (process 14, predictor 1) encoder for one gray component.

    No encoder for this transfer syntax is installed, so the test writes the stream itself:
    one Huffman table giving every difference category 0..16 the 5-bit code of its number.
    """
    x = arr.astype(np.int64)
    pred = np.empty_like(x)
    pred[0, 0] = 1 << (precision - 1)
    pred[0, 1:] = x[0, :-1]  # first row: left neighbour
    pred[1:, 0] = x[:-1, 0]  # first column: the pixel above
    pred[1:, 1:] = x[1:, :-1]  # elsewhere predictor 1: left neighbour
    diff = (x - pred) % 65536
    diff = np.where(diff >= 32768, diff - 65536, diff)
    bits = []
    for d in diff.ravel().tolist():
        size = abs(d).bit_length()
        bits.append(format(size, "05b"))
        if 0 < size < 16:
            bits.append(format(d if d > 0 else d + (1 << size) - 1, f"0{size}b"))
    stream = "".join(bits)
    stream += "1" * (-len(stream) % 8)
    data = bytearray()
    for i in range(0, len(stream), 8):
        data.append(int(stream[i:i + 8], 2))
        if data[-1] == 0xFF:
            data.append(0)  # byte stuffing
    rows, cols = arr.shape
    sof = b"\xff\xc3" + (11).to_bytes(2, "big") + bytes([precision]) + rows.to_bytes(2, "big") \
        + cols.to_bytes(2, "big") + bytes([1, 1, 0x11, 0])
    dht = b"\xff\xc4" + (36).to_bytes(2, "big") + bytes([0]) + bytes([0, 0, 0, 0, 17] + [0] * 11) \
        + bytes(range(17))
    sos = b"\xff\xda" + (8).to_bytes(2, "big") + bytes([1, 1, 0, 1, 0, 0])
    return b"\xff\xd8" + sof + dht + sos + bytes(data) + b"\xff\xd9"


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, RLELossless, JPEG2000Lossless, JPEGLSLossless,
                                    JPEGLosslessSV1], ids=lambda s: s.name)
def test_dicom_round_trip_per_transfer_syntax(tmp_path, syntax):
    path = make_dicom(tmp_path / "x.dcm", syntax=syntax)
    out = read_image(path)
    assert out.dtype == np.float32 and out.shape == ARRAY.shape
    np.testing.assert_array_equal(out, ARRAY.astype(np.float32))


def test_dicom_detected_by_preamble_without_suffix(tmp_path):
    path = make_dicom(tmp_path / "x.dcm", syntax=RLELossless)
    plain = path.rename(tmp_path / "image_without_suffix")
    np.testing.assert_array_equal(read_image(plain), ARRAY)


def test_monochrome1_is_inverted(tmp_path):
    mono2 = read_image(make_dicom(tmp_path / "m2.dcm", photometric="MONOCHROME2"))
    mono1 = read_image(make_dicom(tmp_path / "m1.dcm", photometric="MONOCHROME1"))
    np.testing.assert_array_equal(mono2, ARRAY)
    np.testing.assert_array_equal(mono1, 4095.0 - ARRAY)  # ARRAY spans 0..4095


def test_voi_window_follows_the_linear_formula(tmp_path):
    center, width = 1800.0, 1201.0
    out = read_image(make_dicom(tmp_path / "w.dcm", WindowCenter=center, WindowWidth=width))
    x = ARRAY.astype(np.float64)  # PS3.3 C.11.2.1.2.1 with output range 0..1, written out by hand
    expected = np.where(x <= center - 0.5 - (width - 1) / 2, 0.0,
                        np.where(x > center - 0.5 + (width - 1) / 2, 1.0,
                                 (x - (center - 0.5)) / (width - 1) + 0.5))
    assert 0 < expected.mean() < 1 and (expected == 0).any() and (expected == 1).any()
    scaled = (out - out.min()) / (out.max() - out.min())
    np.testing.assert_allclose(scaled, expected, atol=1e-6)


def test_modality_rescale_applied(tmp_path):
    out = read_image(make_dicom(tmp_path / "r.dcm", RescaleSlope=2.0, RescaleIntercept=-100.0))
    np.testing.assert_allclose(out, 2.0 * ARRAY - 100.0)


def test_padding_becomes_darkest_after_inversion(tmp_path):
    arr = ARRAY.copy()
    arr[:, :4] = 4095  # MONOCHROME1 scanners pad with the stored maximum
    out = read_image(make_dicom(tmp_path / "p.dcm", arr, photometric="MONOCHROME1", PixelPaddingValue=4095))
    pad = arr == 4095
    body = arr[~pad].astype(np.float64)
    expected = np.where(pad, body.min(), body.max() + body.min() - arr)
    assert body.max() < 4095
    np.testing.assert_array_equal(out, expected)
    assert (out[:, :4] == out.min()).all()


def test_for_processing_is_skipped(tmp_path):
    path = make_dicom(tmp_path / "raw.dcm", PresentationIntentType="FOR PROCESSING")
    with pytest.raises(SkipImage) as info:
        read_image(path)
    assert info.value.reason == "FOR PROCESSING" and str(path) in str(info.value)
    shown = make_dicom(tmp_path / "shown.dcm", PresentationIntentType="FOR PRESENTATION")
    np.testing.assert_array_equal(read_image(shown), ARRAY)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, RLELossless, JPEG2000Lossless],
                         ids=lambda s: s.name)
def test_truncated_dicom_names_the_file(tmp_path, syntax):
    whole = make_dicom(tmp_path / "whole.dcm", syntax=syntax).read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ImageError) as info:
        read_image(cut)
    assert str(cut) in str(info.value) and "truncated" in info.value.reason


def test_unknown_transfer_syntax(tmp_path):
    path = make_dicom(tmp_path / "x.dcm", syntax=RLELossless)
    from pydicom import dcmread

    ds = dcmread(path)
    ds.file_meta.TransferSyntaxUID = "1.2.826.0.1.3680043.99999.1"  # a private, encapsulated syntax
    ds.save_as(path)
    with pytest.raises(ImageError, match="transfer syntax 1.2.826.0.1.3680043.99999.1"):
        read_image(path)


@pytest.mark.parametrize("name", ["junk.dcm", "junk.png", "junk.bin", "junk.dicom"])
def test_garbage_bytes(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(RNG.integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(ImageError) as info:
        read_image(path)
    assert str(path) in str(info.value) and info.value.reason


def test_palette_color_is_refused():
    from pydicom.data import get_testdata_file

    with pytest.raises(ImageError, match="PALETTE COLOR"):
        read_image(get_testdata_file("examples_palette.dcm"))


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="file not found"):
        read_image(tmp_path / "absent.png")


@pytest.mark.parametrize("suffix", [".png", ".pgm", ".tif"])
def test_lossless_gray_files_read_back(tmp_path, suffix):
    arr8 = (ARRAY >> 4).astype(np.uint8)
    Image.fromarray(arr8).save(tmp_path / f"x{suffix}")
    np.testing.assert_array_equal(read_image(tmp_path / f"x{suffix}"), arr8)
    if suffix == ".pgm":
        assert (tmp_path / "x.pgm").read_bytes()[:2] == b"P5"


def test_16_bit_png(tmp_path):
    Image.fromarray(ARRAY).save(tmp_path / "x16.png")
    np.testing.assert_array_equal(read_image(tmp_path / "x16.png"), ARRAY)


def test_jpeg_reads_close_to_its_source(tmp_path):
    smooth = np.add.outer(np.arange(64), np.arange(48)).astype(np.uint8) * 2
    Image.fromarray(smooth).save(tmp_path / "x.jpg", quality=95)
    out = read_image(tmp_path / "x.jpg")
    assert out.shape == smooth.shape and np.abs(out - smooth).mean() < 2.0


def test_rgb_is_converted_to_luma(tmp_path):
    rgb = RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb, mode="RGB").save(tmp_path / "c.png")
    luma = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose(read_image(tmp_path / "c.png"), luma, atol=1.0)


def test_truncated_jpeg(tmp_path):
    Image.fromarray((ARRAY >> 4).astype(np.uint8)).save(tmp_path / "x.jpg")
    data = (tmp_path / "x.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="cut.jpg"):
        read_image(tmp_path / "cut.jpg")
