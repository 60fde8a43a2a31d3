"""CBIS-DDSM (TCIA): four case-description CSVs, one row per abnormality, DICOMs in NBIA layout.

The CSVs' ``image file path`` (``<subject>/<uid>/<uid>/000000.dcm``) does not match the
NBIA download (``<subject>/<study>/<series>/1-1.dcm``), so an image is found by, in order:
the CSV path under the root; a folder named like the path's first component (the NBIA
subject, e.g. ``Mass-Test_P_00173_LEFT_CC``); the DICOM ``PatientID`` tag of any other
DICOM under the root (headers only). The official split is ignored: sample selection
re-splits the union of the four files.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from client.sites.base import (
    VIEWS,
    AdapterError,
    AdapterResult,
    MappingReport,
    SiteAdapter,
    find_metadata,
    finish,
    map_at_lines,
    read_delimited,
    read_dicom_header,
    register_adapter,
    require_columns,
)

CSV_NAMES: tuple[str, ...] = (
    "mass_case_description_train_set.csv",
    "mass_case_description_test_set.csv",
    "calc_case_description_train_set.csv",
    "calc_case_description_test_set.csv",
)
DENSITY = {"1": "A", "2": "B", "3": "C", "4": "D", "0": None}
PATHOLOGY = {"MALIGNANT": "malignant", "BENIGN": "benign", "BENIGN_WITHOUT_CALLBACK": "benign"}
SIDE = {"LEFT": "L", "RIGHT": "R"}
_RANK = {"benign": 1, "malignant": 2}
_COLUMNS = ("patient_id", "density", "left or right breast", "image view", "pathology", "image file path")


def _read_csv(path: Path, report: MappingReport) -> pd.DataFrame:
    """One CSV → rows of patient, side, view, density, diagnosis, subject and CSV path."""
    frame, lines = read_delimited(path)
    # The calc CSVs spell the density column with a space, the mass CSVs with an underscore.
    frame = frame.rename(columns={"breast_density": "density", "breast density": "density"})
    if "density" not in frame.columns:
        raise AdapterError(f"{path}: missing column 'breast_density' (or 'breast density')")
    require_columns(frame, _COLUMNS, path)
    report.rows_read += len(frame)
    views = frame["image view"].str.strip().str.upper()
    keep = views.isin(VIEWS).to_numpy()
    for view, n in views[~keep].value_counts().items():
        report.drop(f"view {view!r} is not CC/MLO", n)
    frame, views = frame.loc[keep], views[keep]
    lines = [line for line, k in zip(lines, keep, strict=True) if k]
    csv_path = frame["image file path"].str.strip().str.replace("\\", "/")
    return pd.DataFrame({
        "patient_id": frame["patient_id"].str.strip(),
        "laterality": map_at_lines(frame["left or right breast"], SIDE, path, "left or right breast", lines),
        "view": views,
        "density": map_at_lines(frame["density"], DENSITY, path, "density", lines),
        "diagnosis": map_at_lines(frame["pathology"], PATHOLOGY, path, "pathology", lines),
        "csv_path": csv_path,
        "subject": csv_path.str.split("/").str[0],
    })


def _aggregate(rows: pd.DataFrame, report: MappingReport) -> pd.DataFrame:
    """One row per image (patient, side, view); malignant wins over benign."""
    keys = ["patient_id", "laterality", "view"]
    rank = rows["diagnosis"].map(_RANK)
    mixed = rows.assign(rank=rank).groupby(keys)["rank"].nunique(dropna=True) > 1
    if mixed.any():
        report.notes.append(
            f"{int(mixed.sum())} images carry abnormalities with different pathologies; "
            "diagnosis = malignant (malignant wins)"
        )
    density_mixed = rows.groupby(keys)["density"].nunique(dropna=True) > 1
    if density_mixed.any():
        report.notes.append(f"{int(density_mixed.sum())} images list different densities; kept the first")
    rows = rows.assign(rank=rank.fillna(0)).sort_values("rank", ascending=False, kind="stable")
    images = rows.groupby(keys, sort=True).agg(
        density=("density", "first"),
        diagnosis=("diagnosis", "first"),
        candidates=("subject", lambda s: list(dict.fromkeys(s))),
        csv_paths=("csv_path", lambda s: list(dict.fromkeys(s))),
    ).reset_index()
    report.drop("further abnormality of the same image (merged into one scan)", len(rows) - len(images))
    return images


class _ImageIndex:
    """Finds an image's DICOM under the root by CSV path, NBIA subject folder, or PatientID."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.folders: dict[str, Path] = {}
        self.dicoms: list[Path] = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            here = Path(dirpath)
            self.folders.setdefault(here.name, here)
            self.dicoms += [here / f for f in sorted(filenames) if f.lower().endswith(".dcm")]
        self._by_tag: dict[str, Path] | None = None

    def _tag_index(self) -> dict[str, Path]:
        """PatientID → file, over full-mammogram DICOMs only (headers read once, lazily)."""
        if self._by_tag is None:
            self._by_tag = {}
            for path in self.dicoms:
                ds = read_dicom_header(path)
                desc = str(getattr(ds, "SeriesDescription", "")).lower() if ds is not None else ""
                if ds is None or "roi" in desc or "crop" in desc:
                    continue
                self._by_tag.setdefault(str(getattr(ds, "PatientID", "")).strip(), path)
        return self._by_tag

    def find(self, csv_paths: list[str], subjects: list[str]) -> Path | None:
        """Return the image's DICOM, or ``None`` if none of the three ways finds it."""
        for rel in csv_paths:
            if rel and (self.root / rel).is_file():
                return self.root / rel
        for subject in subjects:
            folder = self.folders.get(subject)
            files = sorted(folder.rglob("*.dcm")) if folder is not None else []
            if files:
                return files[0]
        by_tag = self._tag_index()
        return next((by_tag[s] for s in subjects if s in by_tag), None)


@register_adapter
class CBISDDSMAdapter(SiteAdapter):
    """CBIS-DDSM: the union of the mass and calc case descriptions, one scan per image."""

    name = "CBIS-DDSM"

    def read(self, root: Path) -> AdapterResult:
        """Map the CSVs under ``root`` (or one level below) and resolve each image's DICOM."""
        root = Path(root).resolve()
        report = MappingReport(site=self.name)
        found = {name: find_metadata(root, (name,)) for name in CSV_NAMES}
        present = [p for p in found.values() if p is not None]
        if not present:
            raise AdapterError(f"{root}: no CBIS-DDSM case description found; expected {list(CSV_NAMES)}")
        absent = [name for name, p in found.items() if p is None]
        if absent:
            report.notes.append(f"case descriptions not found (read the others): {absent}")
        report.notes.append("official train/test split ignored (not patient-disjoint across lesion types)")
        report.notes.append("no healthy scans, no age in this release")
        images = _aggregate(pd.concat([_read_csv(p, report) for p in present], ignore_index=True), report)
        index = _ImageIndex(root)
        paths = [index.find(c, s) for c, s in zip(images["csv_paths"], images["candidates"], strict=True)]
        found_mask = pd.Series([p is not None for p in paths], index=images.index)
        report.drop("image file not found", int((~found_mask).sum()))
        images = images.assign(image_path=[str(p) for p in paths]).loc[found_mask]
        images = images.assign(
            site=self.name,
            scan_id=images["patient_id"] + "_" + images["laterality"] + "_" + images["view"],
            age=float("nan"),
        )
        return finish(images, report)
