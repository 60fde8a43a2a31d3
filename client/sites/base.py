"""What every site adapter returns, the adapter registry, and shared mapping helpers.

An adapter reads one public release (or a hospital export) *as it is on disk* and maps it
to the common manifest (:data:`client.schema.MANIFEST_COLUMNS`, without ``split``, which
sample selection assigns) plus ``image_path``. It never guesses a label: where a release
has none (BI-RADS is not a diagnosis) the column stays missing, and every row it cannot
map is dropped with a counted reason in the :class:`MappingReport`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from client.schema import MANIFEST_COLUMNS, TASKS

#: Columns of an adapter's output: the manifest without ``split``, plus the image file.
ADAPTER_COLUMNS: tuple[str, ...] = tuple(c for c in MANIFEST_COLUMNS if c != "split") + ("image_path",)
VIEWS: tuple[str, ...] = ("CC", "MLO")
LATERALITIES: tuple[str, ...] = ("L", "R")


class AdapterError(ValueError):
    """The release on disk cannot be read as expected; the message names file, row, column."""


@dataclass
class MappingReport:
    """Counts of what an adapter read, mapped and dropped, and why."""

    site: str
    rows_read: int = 0
    mapped: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)

    def drop(self, reason: str, n: int = 1) -> None:
        """Count ``n`` rows dropped for ``reason``."""
        if n:
            self.dropped[reason] += int(n)

    def summary(self, manifest: pd.DataFrame | None = None) -> str:
        """Human-readable lines: rows read, mapped, dropped by reason, labels per task."""
        lines = [f"{self.site}: read {self.rows_read} rows, mapped {self.mapped} scans"]
        lines += [f"  dropped {n}: {why}" for why, n in sorted(self.dropped.items())]
        if manifest is not None and len(manifest):
            for task in TASKS:
                counts = manifest[task].value_counts().to_dict()
                missing = int(manifest[task].isna().sum())
                lines.append(f"  {task}: {dict(sorted(counts.items()))}, missing {missing}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


@dataclass(frozen=True)
class AdapterResult:
    """An adapter's manifest (``ADAPTER_COLUMNS``) and its mapping report."""

    manifest: pd.DataFrame
    report: MappingReport


class SiteAdapter:
    """Base class: subclasses set ``name`` (the manifest's site name) and implement ``read``."""

    name: ClassVar[str] = ""

    def read(self, root: Path) -> AdapterResult:
        """Map the release under ``root`` to the manifest; raise :class:`AdapterError` if unreadable."""
        raise NotImplementedError


ADAPTERS: dict[str, type[SiteAdapter]] = {}


def _key(name: str) -> str:
    return name.lower().replace("_", "-").replace(" ", "-")


def register_adapter(cls: type[SiteAdapter]) -> type[SiteAdapter]:
    """Class decorator adding an adapter to :data:`ADAPTERS` under its ``name``."""
    key = _key(cls.name)
    if not key or key in ADAPTERS:
        raise ValueError(f"adapter name {cls.name!r} is empty or already registered")
    ADAPTERS[key] = cls
    return cls


def get_adapter(name: str, **options: Any) -> SiteAdapter:
    """Instantiate the adapter registered as ``name`` (case-insensitive).

    Raises
    ------
    KeyError
        Naming the known adapters.
    """
    import client.sites  # noqa: F401  (registers the adapters)

    try:
        cls = ADAPTERS[_key(name)]
    except KeyError:
        known = sorted(c.name for c in ADAPTERS.values())
        raise KeyError(f"no site adapter {name!r}; known adapters: {known}") from None
    return cls(**options)


def require_columns(frame: pd.DataFrame, columns: list[str] | tuple[str, ...], source: Path | str) -> None:
    """Raise :class:`AdapterError` naming ``source`` and the first missing column."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise AdapterError(
            f"{source}: missing column {missing[0]!r}; expected columns {list(columns)}, "
            f"found {list(frame.columns)}"
        )


def map_values(
    values: pd.Series,
    mapping: Mapping[Any, str | None] | Callable[[Any], str | None],
    source: Path | str,
    column: str,
    *,
    row_offset: int = 2,
) -> pd.Series:
    """Map raw label values; blanks become missing, an unmapped value is an error.

    Parameters
    ----------
    values : pandas.Series
        Raw column; strings are stripped before lookup.
    mapping : mapping or callable
        Raw value → manifest value (``None`` for "deliberately missing"). A callable
        raises ``KeyError`` for a value it does not know.
    source, column : str
        Named in the error.
    row_offset : int
        Added to the 0-based position to give the file's line number (2: header + 1).

    Raises
    ------
    AdapterError
        Naming file, line, column, the value and the accepted values.
    """
    lookup = mapping if callable(mapping) else mapping.__getitem__
    out: list[str | None] = []
    for pos, raw in enumerate(values.tolist()):
        value = raw.strip() if isinstance(raw, str) else raw
        if value is None or value == "" or (isinstance(value, float) and np.isnan(value)):
            out.append(None)
            continue
        try:
            out.append(lookup(value))
        except (KeyError, ValueError):
            accepted = sorted(map(str, mapping)) if not callable(mapping) else "see the adapter"
            raise AdapterError(
                f"{source}: line {pos + row_offset}, column {column!r}: unknown value {raw!r}; "
                f"expected one of {accepted}"
            ) from None
    return pd.Series(out, index=values.index, dtype=object)


def finish(rows: pd.DataFrame, report: MappingReport) -> AdapterResult:
    """Order columns, make ids strings, drop duplicate scans (counted) and fill the report."""
    require_columns(rows, ADAPTER_COLUMNS, f"{report.site} adapter output")
    frame = rows.loc[:, list(ADAPTER_COLUMNS)].copy()
    for col in ("site", "patient_id", "scan_id", "image_path"):
        frame[col] = frame[col].astype(str)
    frame["age"] = pd.to_numeric(frame["age"], errors="coerce").astype(float)
    for col in ("view", "laterality", "density", "diagnosis"):
        frame[col] = frame[col].astype(object).where(frame[col].notna(), None)
    dup = frame["scan_id"].duplicated(keep="first")
    report.drop("duplicate scan id (kept the first row)", int(dup.sum()))
    frame = frame.loc[~dup].reset_index(drop=True)
    report.mapped = len(frame)
    return AdapterResult(manifest=frame, report=report)


def find_metadata(root: Path, names: tuple[str, ...], *, depth: int = 1) -> Path | None:
    """Return the first file called one of ``names`` in ``root`` or up to ``depth`` folders below.

    Parameters
    ----------
    root : pathlib.Path
        Release root.
    names : tuple of str
        Accepted file names, in order of preference (exact, case-sensitive).
    depth : int
        How many folder levels below ``root`` to search.

    Returns
    -------
    pathlib.Path or None
        The file, or ``None`` when none of the names exists there.
    """
    for name in names:
        for level in range(depth + 1):
            found = sorted(p for p in Path(root).glob("/".join(["*"] * level + [name])) if p.is_file())
            if found:
                return found[0]
    return None


def read_delimited(path: Path, delimiter: str = ",") -> tuple[pd.DataFrame, list[int]]:
    """Read a delimited text file as strings, keeping each record's first line number.

    Quoted fields may hold newlines (CBIS-DDSM does), so the line of record ``i`` is not
    ``i + 2``; error messages use the returned line numbers. Short records are padded with
    blanks; header names are stripped.

    Returns
    -------
    tuple of (pandas.DataFrame, list of int)
        Object-dtype frame of stripped-header string columns, and the line of each record.
    """
    import csv

    with open(path, newline="", encoding="utf-8-sig", errors="replace") as fh:
        reader = csv.reader(fh, delimiter=delimiter)
        header = [h.strip() for h in next(reader, [])]
        rows: list[list[str]] = []
        lines: list[int] = []
        end = reader.line_num
        for record in reader:
            if any(field.strip() for field in record):
                rows.append((record + [""] * len(header))[: len(header)])
                lines.append(end + 1)
            end = reader.line_num
    return pd.DataFrame(rows, columns=header, dtype=object), lines


def map_at_lines(
    values: pd.Series,
    mapping: Mapping[Any, str | None] | Callable[[Any], str | None],
    source: Path | str,
    column: str,
    lines: list[int],
) -> pd.Series:
    """:func:`map_values` whose error names the given line of each value (``lines[i]``)."""
    try:
        return map_values(values, mapping, source, column)
    except AdapterError:
        for pos, line in enumerate(lines):
            map_values(values.iloc[pos : pos + 1], mapping, source, column, row_offset=line)
        raise


def read_dicom_header(path: Path) -> Any | None:
    """Read a DICOM file's header without pixel data; ``None`` if it is not readable DICOM."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, EOFError):
        return None


def require_metadata(root: Path, names: tuple[str, ...], what: str, *, depth: int = 1) -> Path:
    """Like :func:`find_metadata`, but a missing file is an :class:`AdapterError` naming it.

    Parameters
    ----------
    root : pathlib.Path
        Release root.
    names : tuple of str
        Accepted file names, in order of preference.
    what : str
        What the file is, for the message (e.g. ``"RSNA metadata"``).
    depth : int
        How many folder levels below ``root`` to search.

    Returns
    -------
    pathlib.Path
        The file found.
    """
    found = find_metadata(root, names, depth=depth)
    if found is None:
        raise AdapterError(
            f"{root}: expected {' or '.join(names)} ({what}) in it or up to {depth} folder(s) below"
        )
    return found
