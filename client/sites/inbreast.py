"""INbreast: ``INbreast.csv`` (semicolon-separated) or ``INbreast.xls``, DICOMs in ``AllDICOMs/``.

Patient ID and age are ``removed`` in the release, so patients are inferred: every DICOM
is named ``<File Name>_<hash>_MG_<L|R>_<view>_ANON.dcm`` and the hash is shared by the
images of one case (one examination of one woman), so the hash is used as patient id.
The release gives BI-RADS only, which is not a diagnosis: diagnosis stays missing.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from client.sites.base import (
    LATERALITIES,
    VIEWS,
    AdapterResult,
    MappingReport,
    SiteAdapter,
    finish,
    map_at_lines,
    read_delimited,
    register_adapter,
    require_columns,
    require_metadata,
)

COLUMNS: tuple[str, ...] = ("Patient age", "Laterality", "View", "File Name", "ACR")
ACR = {"1": "A", "2": "B", "3": "C", "4": "D"}
DICOM_NAME = re.compile(r"^(\d+)_([0-9A-Za-z]+)_MG_([LR])_([A-Z]+)_ANON\.dcm$", re.IGNORECASE)


def _text(value: object) -> str:
    """Cell as text: xls numbers come back as floats (``22678622.0``, ``4.0``)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "" if value is None or (isinstance(value, float) and value != value) else str(value).strip()


def _acr(value: object) -> str:
    """ACR 1–4 → A–D; the xls can hold a stray ``'``; raises ``KeyError`` otherwise."""
    return ACR[_text(value).strip("'").strip()]


def _age(value: object) -> float:
    """Age in years, or NaN where the release says ``removed`` (or gives no number)."""
    try:
        return float(_text(value))
    except ValueError:
        return float("nan")


def read_metadata(root: Path) -> tuple[pd.DataFrame, list[int], Path]:
    """Read ``INbreast.csv``, else ``INbreast.xls``; return rows as text, their lines, the file."""
    source = require_metadata(root, ("INbreast.csv", "INbreast.xls"), "INbreast metadata")
    if source.suffix == ".csv":
        frame, lines = read_delimited(source, delimiter=";")
    else:
        frame = pd.read_excel(source, engine="xlrd", dtype=object)
        frame.columns = [str(c).strip() for c in frame.columns]
        frame = frame.loc[frame.notna().any(axis=1)].reset_index(drop=True)
        lines = [i + 2 for i in range(len(frame))]
    require_columns(frame, COLUMNS, source)
    frame = frame.assign(**{c: frame[c].map(_text) for c in ("Laterality", "View", "File Name")})
    return frame, lines, source


def index_dicoms(root: Path) -> dict[str, tuple[Path, str]]:
    """File Name → (DICOM path, case hash) for every ``AllDICOMs``-style file under ``root``."""
    found: dict[str, tuple[Path, str]] = {}
    for path in sorted(root.rglob("*.dcm")):
        match = DICOM_NAME.match(path.name)
        if match:
            found.setdefault(match.group(1), (path, match.group(2)))
    return found


@register_adapter
class INbreastAdapter(SiteAdapter):
    """INbreast: one scan per metadata row, density from ACR, no diagnosis."""

    name = "INbreast"

    def read(self, root: Path) -> AdapterResult:
        """Map the metadata under ``root`` and match each row to its DICOM by file-name prefix."""
        root = Path(root).resolve()
        frame, lines, source = read_metadata(root)
        report = MappingReport(site=self.name, rows_read=len(frame))
        report.notes += [
            "diagnosis missing: the release gives BI-RADS only, which is not a diagnosis",
            "patient id = the case hash in the DICOM file name (the release removed patient ids)",
        ]
        keep = frame["View"].str.upper().isin(VIEWS).to_numpy()
        for view, n in frame.loc[~keep, "View"].value_counts().items():
            report.drop(f"view {view!r} is not CC/MLO", n)
        frame = frame.loc[keep]
        lines = [line for line, k in zip(lines, keep, strict=True) if k]
        side = {s: s for s in LATERALITIES}
        dicoms = index_dicoms(root)
        hit = [dicoms.get(name) for name in frame["File Name"]]
        rows = pd.DataFrame({
            "site": self.name,
            "patient_id": [h[1] if h else "" for h in hit],
            "scan_id": frame["File Name"],
            "view": frame["View"].str.upper(),
            "laterality": map_at_lines(frame["Laterality"].str.upper(), side, source, "Laterality", lines),
            "age": frame["Patient age"].map(_age),
            "density": map_at_lines(frame["ACR"], _acr, source, "ACR", lines),
            "diagnosis": None,
            "image_path": [str(h[0]) if h else "" for h in hit],
        })
        exists = pd.Series([h is not None for h in hit], index=rows.index)
        report.drop("image file not found", int((~exists).sum()))
        return finish(rows.loc[exists], report)
