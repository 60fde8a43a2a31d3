"""Writers for tiny site-release fixtures (xlsx, JPG, DICOM) and a row-by-row manifest check."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import openpyxl
import pandas as pd
from PIL import Image

from client.schema import MANIFEST_COLUMNS, validate_manifest
from client.sites.base import ADAPTER_COLUMNS

#: Fields of an expected row, in order; ``image_path`` is relative to the fixture root.
FIELDS = ("patient_id", "scan_id", "view", "laterality", "age", "density", "diagnosis", "image_path")


def write_xlsx(path: Path, sheets: dict[str, Sequence[Sequence[Any]]]) -> Path:
    """Write a workbook with one sheet per entry (first row = header), in order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    book = openpyxl.Workbook()
    book.remove(book.active)
    for name, rows in sheets.items():
        sheet = book.create_sheet(name)
        for row in rows:
            sheet.append(list(row))
    book.save(path)
    return path


def write_jpg(path: Path, value: int = 100) -> Path:
    """A small 8-bit grayscale JPG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((16, 12), value, dtype=np.uint8)).save(path, format="JPEG")
    return path


def write_dicom(path: Path, age: str | None) -> Path:
    """A small MG DICOM (16-bit MONOCHROME2) with PatientAge (0010,1010) when given."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "MG", "anon"
    if age is not None:
        ds.PatientAge = age
    ds.Rows, ds.Columns, ds.SamplesPerPixel = 8, 6, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.arange(48, dtype=np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _same(got: Any, want: Any) -> bool:
    if isinstance(want, float) and math.isnan(want):
        return isinstance(got, float) and math.isnan(got)
    return got == want


def assert_rows(manifest: pd.DataFrame, root: Path, site: str, expected: list[tuple[Any, ...]]) -> None:
    """Check the manifest row by row (in scan_id order) against hand-written rows of :data:`FIELDS`."""
    assert list(manifest.columns) == list(ADAPTER_COLUMNS)
    assert (manifest["site"] == site).all()
    got = manifest.sort_values("scan_id").reset_index(drop=True)
    want = sorted(expected, key=lambda row: row[1])
    assert got["scan_id"].tolist() == [row[1] for row in want]
    for i, row in enumerate(want):
        for field, value in zip(FIELDS, row, strict=True):
            value = str(root / value) if field == "image_path" else value
            assert _same(got.at[i, field], value), (row[1], field, got.at[i, field], value)
    assert all(Path(p).is_file() and Path(p).is_absolute() for p in got["image_path"])
    # The schema's own validator is an independent check of the label vocabularies.
    validate_manifest(got.assign(split="train").loc[:, list(MANIFEST_COLUMNS)], site)
