"""CMMD (TCIA): ``CMMD_clinicaldata_revision.xlsx`` (one row per breast) and NBIA-layout DICOMs.

Laterality and view come from each DICOM's header (``ImageLaterality``; the first item of
``ViewCodeSequence`` as SNOMED code, else ``ViewPosition``), not from file names or the
NBIA ``metadata.csv``. An image is joined to the clinical row of its patient (the NBIA
subject folder ``<ID1>``, else the ``PatientID`` tag) and breast. CMMD has no density.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from client.sites.base import (
    ADAPTER_COLUMNS,
    VIEWS,
    AdapterResult,
    MappingReport,
    SiteAdapter,
    finish,
    map_values,
    read_dicom_header,
    register_adapter,
    require_columns,
    require_metadata,
)

CLINICAL = "CMMD_clinicaldata_revision.xlsx"
COLUMNS: tuple[str, ...] = ("ID1", "LeftRight", "Age", "classification")
CLASSIFICATION = {"Benign": "benign", "Malignant": "malignant"}
SIDE = {"L": "L", "R": "R"}
#: SNOMED CT codes of ViewCodeSequence.
VIEW_CODES = {"399162004": "CC", "399368009": "MLO"}


def _age(value: object) -> str:
    """Validate an age cell; ``float`` raises ``ValueError`` for text, which map_values reports."""
    float(value)  # type: ignore[arg-type]
    return str(value)


def read_clinical(source: Path, report: MappingReport) -> dict[tuple[str, str], tuple[float, str | None]]:
    """(ID1, side) → (age, diagnosis) from the clinical sheet; duplicate breasts keep the first row."""
    frame = pd.read_excel(source, engine="openpyxl", dtype=object)
    frame.columns = [str(c).strip() for c in frame.columns]
    require_columns(frame, COLUMNS, source)
    ids = frame["ID1"].map(lambda v: str(v).strip())
    sides = map_values(frame["LeftRight"], SIDE, source, "LeftRight")
    ages = pd.to_numeric(map_values(frame["Age"], _age, source, "Age"))
    labels = map_values(frame["classification"], CLASSIFICATION, source, "classification")
    clinical: dict[tuple[str, str], tuple[float, str | None]] = {}
    for key, age, label in zip(zip(ids, sides, strict=True), ages, labels, strict=True):
        clinical.setdefault(key, (float(age), label))
    if len(clinical) < len(frame):
        dup = len(frame) - len(clinical)
        report.notes.append(f"{dup} duplicate clinical rows of a breast (kept the first)")
    return clinical


def image_view(ds: object) -> str | None:
    """CC/MLO from ``ViewCodeSequence[0].CodeValue``, else ``ViewPosition``; other codes as is."""
    seq = getattr(ds, "ViewCodeSequence", None)
    if seq:
        code = str(getattr(seq[0], "CodeValue", "")).strip()
        return VIEW_CODES.get(code, f"code {code}")
    position = str(getattr(ds, "ViewPosition", "")).strip().upper()
    return position or None


def _scan(path: Path, root: Path, ids: set[str]) -> tuple[dict[str, object] | None, str]:
    """One DICOM → manifest fields, or ``None`` and the reason it is dropped."""
    ds = read_dicom_header(path)
    if ds is None:
        return None, "unreadable DICOM header"
    rel = path.relative_to(root)
    tag_id = str(getattr(ds, "PatientID", "")).strip()
    # The NBIA subject folder is the ID1; the tag is the fallback for other layouts.
    patient = next((part for part in rel.parts[:-1] if part in ids), tag_id)
    side = str(getattr(ds, "ImageLaterality", "")).strip().upper()
    view = image_view(ds)
    if side not in SIDE:
        return None, "ImageLaterality missing or not L/R"
    if view not in VIEWS:
        return None, "view (ViewCodeSequence/ViewPosition) missing or not CC/MLO"
    return {"patient_id": patient, "laterality": side, "view": view, "image_path": str(path),
            "scan_id": rel.with_suffix("").as_posix()}, ""


@register_adapter
class CMMDAdapter(SiteAdapter):
    """CMMD: one scan per DICOM whose breast has a clinical row."""

    name = "CMMD"

    def read(self, root: Path) -> AdapterResult:
        """Map the clinical sheet under ``root`` (or one level below) and every DICOM below ``root``."""
        root = Path(root).resolve()
        source = require_metadata(root, (CLINICAL,), "CMMD clinical data")
        report = MappingReport(site=self.name)
        clinical = read_clinical(source, report)
        report.notes += ["density missing: CMMD ships no density", "no healthy scans in this release"]
        ids = {key[0] for key in clinical}
        scans: list[dict[str, object]] = []
        dicoms = _dicoms(root)
        report.rows_read = len(dicoms)
        for path in dicoms:
            scan, reason = _scan(path, root, ids)
            if scan is not None and (scan["patient_id"], scan["laterality"]) not in clinical:
                scan, reason = None, "breast has no clinical row"
            if scan is None:
                report.drop(reason)
                continue
            age, label = clinical[(scan["patient_id"], scan["laterality"])]  # type: ignore[index]
            scans.append({**scan, "site": self.name, "age": age, "density": None, "diagnosis": label})
        return finish(pd.DataFrame(scans, columns=list(ADAPTER_COLUMNS)), report)


def _dicoms(root: Path) -> list[Path]:
    """Every ``*.dcm`` below ``root``, in a stable order."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        found += [Path(dirpath) / f for f in sorted(filenames) if f.lower().endswith(".dcm")]
    return found
