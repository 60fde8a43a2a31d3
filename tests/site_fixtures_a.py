"""Writers for tiny fixtures in the public releases' on-disk layouts (site adapter tests)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

MG_STORAGE = "1.2.840.10008.5.1.4.1.1.1.2"  # Digital Mammography X-Ray Image Storage - For Presentation
SNOMED = {"CC": "399162004", "MLO": "399368009", "ML": "399260004"}


def write_dicom(
    path: Path,
    *,
    patient_id: str = "anon",
    laterality: str | None = None,
    view_code: str | None = None,
    view_position: str | None = None,
    series_description: str | None = None,
    size: int = 16,
) -> Path:
    """Write a small 16-bit MONOCHROME2 mammogram DICOM with the given header tags."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MG_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MG_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MG"
    ds.PatientID = patient_id
    if laterality is not None:
        ds.ImageLaterality = laterality
    if view_code is not None:
        item = Dataset()
        item.CodeValue = SNOMED.get(view_code, view_code)
        item.CodingSchemeDesignator = "SCT"
        ds.ViewCodeSequence = [item]
    if view_position is not None:
        ds.ViewPosition = view_position
    if series_description is not None:
        ds.SeriesDescription = series_description
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (np.arange(size * size, dtype=np.uint16) % 4096).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_pgm(path: Path, size: int = 16) -> Path:
    """Write a small 8-bit binary PGM (mini-MIAS format) with Pillow."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.arange(size * size) % 256).astype(np.uint8).reshape(size, size)).save(path)
    return path


def write_csv(path: Path, header: list[str], rows: list[list[str]], delimiter: str = ",") -> Path:
    """Write a CSV with minimal quoting (so embedded newlines end up quoted, as in CBIS-DDSM)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh, delimiter=delimiter, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


def manifest_table(manifest: pd.DataFrame, root: Path, columns: list[str]) -> list[tuple]:
    """Manifest rows as tuples sorted by scan id, ``image_path`` made relative to ``root``."""
    frame = manifest.assign(image_path=[Path(p).relative_to(root).as_posix() for p in manifest["image_path"]])
    frame = frame.sort_values("scan_id")
    out = []
    for row in frame[columns].itertuples(index=False):
        out.append(tuple(None if isinstance(v, float) and np.isnan(v) else v for v in row))
    return out
