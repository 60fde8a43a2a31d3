"""VinDr-Mammo (PhysioNet): ``breast-level_annotations.csv`` and ``images/<study_id>/<image_id>.dicom``.

* Diagnosis stays missing: the release grades BI-RADS only, which is not a diagnosis.
* ``patient_id`` is the ``study_id``: the release has one study per patient and no other id.
* Age comes from ``metadata.csv`` when it has a patient-age column and a key column (its
  headers are unverified, so a few plausible spellings are accepted); otherwise, and for rows
  it leaves blank, from the DICOM tag PatientAge (0010,1010), read header-only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from client.sites.base import (
    AdapterResult,
    MappingReport,
    SiteAdapter,
    finish,
    map_at_lines,
    read_delimited,
    read_dicom_header,
    register_adapter,
    require_columns,
    require_metadata,
)
from client.sites.tables import keep_cc_mlo, keep_existing_images, parse_age

ANNOTATIONS = "breast-level_annotations.csv"
METADATA = "metadata.csv"
COLUMNS = ("study_id", "image_id", "laterality", "view_position", "breast_density")
DENSITY = {f"DENSITY {c}": c for c in "ABCD"}
SIDE = {"L": "L", "R": "R"}
#: Spellings accepted for metadata.csv's age column and for its key columns (best key first).
AGE_NAMES = ("Patient's Age", "PatientAge", "Patient Age", "patient_age", "age")
KEY_NAMES: dict[str, tuple[str, ...]] = {
    "image_id": ("SOP Instance UID", "SOPInstanceUID", "image_id"),
    "series_id": ("Series Instance UID", "SeriesInstanceUID", "series_id"),
    "study_id": ("Study Instance UID", "StudyInstanceUID", "study_id"),
}


def _pick(columns: pd.Index, names: tuple[str, ...]) -> str | None:
    """The first of ``names`` among ``columns``, ignoring case and spaces."""
    present = {"".join(str(c).split()).casefold(): c for c in columns}
    for name in names:
        found = present.get("".join(name.split()).casefold())
        if found is not None:
            return str(found)
    return None


def metadata_ages(path: Path, annotations: pd.DataFrame, report: MappingReport) -> pd.Series:
    """Age per annotation row from ``metadata.csv`` (NaN where it has none).

    Raises
    ------
    AdapterError
        If an age value is not an age (naming file, line and column).
    """
    none = pd.Series(np.nan, index=annotations.index, dtype=float)
    frame, lines = read_delimited(path)
    age_col = _pick(frame.columns, AGE_NAMES)
    key = next(((k, c) for k, names in KEY_NAMES.items() if (c := _pick(frame.columns, names))), None)
    if age_col is None or key is None or key[0] not in annotations.columns:
        report.notes.append(
            f"{path}: no patient-age column {list(AGE_NAMES)} with a key column; age read from DICOM"
        )
        return none
    ages = pd.to_numeric(map_at_lines(frame[age_col], parse_age, path, age_col, lines), errors="coerce")
    by_key = pd.Series(ages.to_numpy(), index=frame[key[1]].str.strip()).dropna()
    by_key = by_key[~by_key.index.duplicated()]
    report.notes.append(f"age from {path} column {age_col!r}, joined on {key[1]!r}")
    return annotations[key[0]].str.strip().map(by_key).astype(float)


def dicom_age(path: str) -> float:
    """PatientAge (0010,1010) of a DICOM file in years; NaN if unreadable, absent or malformed."""
    header: Any = read_dicom_header(Path(path))
    raw = getattr(header, "PatientAge", None) if header is not None else None
    try:
        return parse_age(raw) if raw not in (None, "") else np.nan
    except ValueError:
        return np.nan


@register_adapter
class VinDrMammoAdapter(SiteAdapter):
    """VinDr-Mammo as released on PhysioNet (root: the folder holding the annotation CSV)."""

    name = "VinDr-Mammo"

    def read(self, root: Path) -> AdapterResult:
        """Map ``breast-level_annotations.csv`` (and ages) to the manifest."""
        path = require_metadata(Path(root), (ANNOTATIONS,), "VinDr-Mammo, PhysioNet layout", depth=2)
        frame, lines = read_delimited(path)
        require_columns(frame, COLUMNS, path)
        report = MappingReport(site=self.name, rows_read=len(frame))
        study, image = frame["study_id"].str.strip(), frame["image_id"].str.strip()
        out = pd.DataFrame({"site": self.name, "patient_id": study, "scan_id": image, "diagnosis": None})
        out["view"] = frame["view_position"]
        out["laterality"] = map_at_lines(frame["laterality"], SIDE, path, "laterality", lines)
        out["density"] = map_at_lines(frame["breast_density"], DENSITY, path, "breast_density", lines)
        images = path.parent / "images"
        out["image_path"] = [str(images / s / f"{i}.dicom") for s, i in zip(study, image, strict=True)]
        meta = path.parent / METADATA
        if meta.is_file():
            out["age"] = metadata_ages(meta, frame, report)
        else:
            out["age"] = np.nan
            report.notes.append(f"no {meta}: age read from DICOM PatientAge (0010,1010)")
        out = keep_existing_images(keep_cc_mlo(out, report), report)
        return finish(self._dicom_ages(out, report), report)

    @staticmethod
    def _dicom_ages(out: pd.DataFrame, report: MappingReport) -> pd.DataFrame:
        """Fill the ages metadata.csv left blank from the DICOM headers; add the report's notes."""
        blank = out["age"].isna()
        out.loc[blank, "age"] = [dicom_age(p) for p in out.loc[blank, "image_path"]]
        still = int(out["age"].isna().sum())
        report.notes.append(f"age read from {int(blank.sum())} DICOM headers, missing for {still} scans")
        report.notes.append("diagnosis missing: VinDr-Mammo grades BI-RADS only, which is not a diagnosis")
        report.notes.append("patient_id = study_id (one study per patient in VinDr-Mammo)")
        return out
