"""RSNA Screening Mammography (Kaggle 2022): ``train.csv`` and ``train_images/{patient}/{image}.dcm``.

Diagnosis follows datasets.md's suggested rule: ``cancer = 1`` → malignant, ``cancer = 0``
with ``biopsy = 1`` → benign, otherwise healthy. ``test.csv`` carries no labels and is
ignored. ``BIRADS`` here is not BI-RADS (0 = follow-up, 1 = negative, 2 = normal) and is
not used.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from client.sites.base import (
    VIEWS,
    AdapterResult,
    MappingReport,
    SiteAdapter,
    find_metadata,
    finish,
    map_at_lines,
    read_delimited,
    register_adapter,
    require_columns,
    require_metadata,
)

COLUMNS: tuple[str, ...] = (
    "patient_id", "image_id", "laterality", "view", "age", "cancer", "biopsy", "density",
)
DENSITY = {k: k for k in ("A", "B", "C", "D")}
LATERALITY = {"L": "L", "R": "R"}
FLAG = {"0": "0", "1": "1", "0.0": "0", "1.0": "1"}


def _age(value: str) -> str:
    """Validate an age; ``float`` raises ``ValueError`` for text, which map_values reports."""
    age = float(value)
    if not 0 <= age < 130:
        raise ValueError(value)
    return value


def diagnosis(cancer: pd.Series, biopsy: pd.Series) -> pd.Series:
    """Apply the cancer/biopsy rule to mapped ``"0"``/``"1"`` flags (missing cancer → missing)."""
    out = pd.Series("healthy", index=cancer.index, dtype=object)
    out[biopsy == "1"] = "benign"
    out[cancer == "1"] = "malignant"
    out[cancer.isna()] = None
    return out


@register_adapter
class RSNAAdapter(SiteAdapter):
    """RSNA: one scan per ``train.csv`` row with a CC or MLO view."""

    name = "RSNA"

    def read(self, root: Path) -> AdapterResult:
        """Map ``train.csv`` under ``root`` (or one level below) and locate each DICOM."""
        root = Path(root).resolve()
        source = require_metadata(root, ("train.csv",), "RSNA metadata")
        report = MappingReport(site=self.name)
        if find_metadata(root, ("test.csv",)) is not None:
            report.notes.append("test.csv ignored: it has no cancer/biopsy labels")
        frame, lines = read_delimited(source)
        require_columns(frame, COLUMNS, source)
        report.rows_read = len(frame)
        views = frame["view"].str.strip().str.upper()
        keep = views.isin(VIEWS).to_numpy()
        for view, n in views[~keep].value_counts().items():
            report.drop(f"view {view!r} is not CC/MLO", n)
        frame = frame.loc[keep].assign(view=views[keep])
        lines = [line for line, k in zip(lines, keep, strict=True) if k]
        cancer = map_at_lines(frame["cancer"], FLAG, source, "cancer", lines)
        biopsy = map_at_lines(frame["biopsy"], FLAG, source, "biopsy", lines)
        pid, iid = frame["patient_id"].str.strip(), frame["image_id"].str.strip()
        paths = [source.parent / "train_images" / p / f"{i}.dcm" for p, i in zip(pid, iid, strict=True)]
        rows = pd.DataFrame({
            "site": self.name,
            "patient_id": pid,
            "scan_id": iid,
            "view": frame["view"],
            "laterality": map_at_lines(frame["laterality"], LATERALITY, source, "laterality", lines),
            "age": map_at_lines(frame["age"], _age, source, "age", lines),
            "density": map_at_lines(frame["density"], DENSITY, source, "density", lines),
            "diagnosis": diagnosis(cancer, biopsy),
            "image_path": [str(p) for p in paths],
        })
        exists = pd.Series([p.is_file() for p in paths], index=rows.index)
        report.drop("image file not found", int((~exists).sum()))
        return finish(rows.loc[exists], report)
