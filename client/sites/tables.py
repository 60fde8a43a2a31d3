"""Table and file helpers the site adapters share.

Excel with line numbers, loose value matching, ages, image lookup, and the CC/MLO and
image-exists filters.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from client.sites.base import VIEWS, AdapterError, MappingReport, require_columns

#: DICOM age-string units (AS: ``nnnD``/``W``/``M``/``Y``) as divisors to years.
_AGE_UNITS: dict[str, float] = {"y": 1.0, "m": 12.0, "w": 365.25 / 7, "d": 365.25}
_AGE = re.compile(r"^(\d+(?:\.\d+)?)\s*(y|yrs?|years?|m|months?|w|weeks?|d|days?)?$", re.IGNORECASE)


def _loose(value: Any) -> str:
    text = "".join(str(value).split()).casefold()
    return re.sub(r"^(\d+)\.0+$", r"\1", text)


class LooseMap(dict[Any, Any]):
    """A value map that, failing an exact match, ignores case, spaces and a trailing ``.0``."""

    def __missing__(self, key: Any) -> Any:
        wanted = _loose(key)
        for known in self:
            if _loose(known) == wanted:
                return dict.__getitem__(self, known)
        raise KeyError(key)


def parse_age(value: Any) -> float:
    """Age in years from a number, ``"53"``, ``"53 years"`` or a DICOM age string ``"053Y"``.

    Raises
    ------
    ValueError
        If the value is not an age.
    """
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    match = _AGE.match(str(value).strip())
    if match is None:
        raise ValueError(f"not an age: {value!r}")
    return float(match.group(1)) / _AGE_UNITS[(match.group(2) or "y")[0].lower()]


def find_in(root: Path, name: str, *, is_dir: bool = False) -> Path:
    """The file or folder called ``name`` at ``root`` or anywhere below it (first in sorted order).

    Raises
    ------
    AdapterError
        If ``root`` is not a folder or nothing is called ``name`` under it.
    """
    root = Path(root)
    if not root.is_dir():
        raise AdapterError(f"{root}: site root is not a folder")
    direct = root / name
    if direct.exists() and direct.is_dir() == is_dir:
        return direct
    hits = sorted(p for p in root.rglob(name) if p.is_dir() == is_dir)
    if not hits:
        kind = "folder" if is_dir else "file"
        raise AdapterError(f"{root}: no {kind} {name!r} in it or below it")
    return hits[0]


def read_excel(path: Path, sheet: str | None = None, *, prefer: str = "") -> tuple[pd.DataFrame, list[int]]:
    """Read one sheet as strings (blank → ``""``) without blank rows, and each row's line.

    ``sheet`` must exist; without it, ``prefer`` is read if present, else the first sheet.
    """
    try:
        book = pd.ExcelFile(path)
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise AdapterError(f"{path}: not a readable Excel workbook ({err})") from None
    fallback = prefer if prefer in book.sheet_names else book.sheet_names[0]
    name = sheet if sheet is not None else fallback
    if name not in book.sheet_names:
        raise AdapterError(f"{path}: no sheet {name!r}; sheets are {book.sheet_names}")
    frame = pd.read_excel(book, sheet_name=name, dtype=str)
    frame = frame.astype(object).where(frame.notna(), "")
    filled = (frame.map(lambda v: str(v).strip()) != "").any(axis=1).to_numpy()
    lines = [int(i) + 2 for i in np.flatnonzero(filled)]  # +2: the header is line 1
    return frame.loc[filled].reset_index(drop=True), lines


def canonical_columns(frame: pd.DataFrame, expected: tuple[str, ...], source: Path) -> pd.DataFrame:
    """Rename columns matching ``expected`` up to whitespace and case; a missing one is an error."""

    def squash(name: Any) -> str:
        return " ".join(str(name).split()).casefold()

    present = {squash(c): c for c in frame.columns}
    rename = {present[squash(e)]: e for e in expected if squash(e) in present}
    frame = frame.rename(columns=rename)
    require_columns(frame, expected, source)
    return frame


def index_images(folder: Path, suffixes: tuple[str, ...], report: MappingReport) -> dict[str, Path]:
    """Image files below ``folder`` keyed by their stem without spaces, case-folded."""
    index: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in suffixes and path.is_file():
            key = "".join(path.stem.split()).casefold()
            if key in index:
                report.notes.append(f"{path} has the same name as {index[key]}; kept the latter")
                continue
            index[key] = path
    return index


def keep_cc_mlo(frame: pd.DataFrame, report: MappingReport) -> pd.DataFrame:
    """Drop (counted, per value) rows whose view is neither CC nor MLO; a blank view stays missing."""
    view = frame["view"].map(lambda v: v.strip().upper() if isinstance(v, str) and v.strip() else None)
    bad = (view.notna() & ~view.isin(VIEWS)).to_numpy()
    for raw, n in view[bad].value_counts().items():
        report.drop(f"view {raw!r} is not CC/MLO", int(n))
    out = frame.loc[~bad].copy()
    out["view"] = view[~bad]
    return out


def keep_existing_images(frame: pd.DataFrame, report: MappingReport) -> pd.DataFrame:
    """Drop (counted) rows whose ``image_path`` is not an existing file."""
    found = np.array([Path(p).is_file() for p in frame["image_path"]], dtype=bool)
    report.drop("image file not found", int((~found).sum()))
    return frame.loc[found]
