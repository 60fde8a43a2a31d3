"""A TOML-driven adapter for a hospital export (LBMD and any other hospital).

A hospital without a public release (LBMD) describes its export in a mapping file (see
``configs/sites/lbmd.toml``): the site name, the table (CSV, TSV or Excel), where the images
are, which table column holds each manifest field, and how its raw values map to manifest
values. Nothing is guessed: a raw value the mapping does not declare is an error naming the
file, line and column, and a mapped value outside the manifest vocabulary is an error
naming the mapping file and key.
"""

from __future__ import annotations

import dataclasses
import string
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from client.sites.base import (
    AdapterError,
    AdapterResult,
    MappingReport,
    SiteAdapter,
    finish,
    map_at_lines,
    read_delimited,
    register_adapter,
    require_columns,
)
from client.sites.tables import LooseMap, keep_cc_mlo, keep_existing_images, parse_age, read_excel
from sim.config import ConfigError, build, read_toml

#: Manifest values a mapping may declare; "" is "deliberately missing", and a view mapped
#: to "other" drops the row (counted), as every view but CC/MLO is dropped.
VOCABULARY: dict[str, tuple[str, ...]] = {
    "view": ("CC", "MLO", "other", ""),
    "laterality": ("L", "R", ""),
    "density": ("A", "B", "C", "D", ""),
    "diagnosis": ("healthy", "benign", "malignant", ""),
}


@dataclass(frozen=True)
class ColumnMap:
    """Table column holding each manifest field; an absent field stays missing."""

    patient_id: str
    scan_id: str | None = None
    view: str | None = None
    laterality: str | None = None
    age: str | None = None
    density: str | None = None
    diagnosis: str | None = None


@dataclass(frozen=True)
class ValueMaps:
    """Raw table value → manifest value, per labelled field (absent: raw must be the value)."""

    view: dict[str, str] | None = None
    laterality: dict[str, str] | None = None
    density: dict[str, str] | None = None
    diagnosis: dict[str, str] | None = None


@dataclass(frozen=True)
class GenericMapping:
    """A validated mapping file (``configs/sites/lbmd.toml`` documents every key)."""

    site: str
    table: str
    columns: ColumnMap
    image_root: str = ""
    image: str | None = None
    image_format: str | None = None
    sheet: str | None = None
    separator: str | None = None
    values: ValueMaps = field(default_factory=ValueMaps)


def load_mapping(path: str | Path) -> GenericMapping:
    """Read and validate a mapping file.

    Raises
    ------
    AdapterError
        Naming the file and key: unknown key, wrong type, both or neither of ``image`` /
        ``image_format``, a value table without its column, a value outside :data:`VOCABULARY`.
    """
    try:
        mapping = build(GenericMapping, read_toml(path), str(path))
    except ConfigError as err:
        raise AdapterError(str(err)) from None
    if (mapping.image is None) == (mapping.image_format is None):
        raise AdapterError(f"{path}: set exactly one of 'image' (a column) or 'image_format'")
    for name, table in dataclasses.asdict(mapping.values).items():
        if table is not None and getattr(mapping.columns, name) is None:
            raise AdapterError(f"{path}: values.{name} is given but columns.{name} is not set")
        for raw, value in (table or {}).items():
            if value not in VOCABULARY[name]:
                expected = list(VOCABULARY[name])
                raise AdapterError(f"{path}: values.{name}.{raw!r} = {value!r}; expected one of {expected}")
    return mapping


def read_table(path: Path, sheet: str | None, separator: str | None) -> tuple[pd.DataFrame, list[int]]:
    """Read a CSV/TSV (``separator``, default by suffix) or Excel sheet as strings, with lines."""
    if not path.is_file():
        raise AdapterError(f"{path}: table not found")
    if path.suffix.lower() in (".xlsx", ".xlsm", ".xls"):
        return read_excel(path, sheet)
    return read_delimited(path, separator or ("\t" if path.suffix.lower() == ".tsv" else ","))


def _fields(template: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


@register_adapter
class GenericAdapter(SiteAdapter):
    """Any site described by a TOML mapping file (validated when constructed)."""

    name = "generic"

    def __init__(self, mapping: str | Path) -> None:
        self.mapping_path = Path(mapping)
        self.mapping = load_mapping(self.mapping_path)

    def _relative_images(self, frame: pd.DataFrame) -> pd.Series:
        m = self.mapping
        if m.image is not None:
            return frame[m.image].map(lambda v: str(v).strip())
        fmt = m.image_format or ""
        rows = frame.loc[:, _fields(fmt)].to_dict("records")
        return pd.Series([fmt.format(**{k: str(v).strip() for k, v in r.items()}) for r in rows], dtype=str)

    def _map(self, frame: pd.DataFrame, lines: list[int], path: Path, root: Path) -> pd.DataFrame:
        m, cols = self.mapping, dataclasses.asdict(self.mapping.columns)
        image_cols = [m.image] if m.image else _fields(m.image_format or "")
        require_columns(frame, [c for c in cols.values() if c] + image_cols, path)
        rel = self._relative_images(frame)
        out = pd.DataFrame({"site": m.site, "rel": rel.to_numpy()})
        out["image_path"] = [str(root / m.image_root / r) for r in rel]
        out["patient_id"] = frame[m.columns.patient_id].map(lambda v: str(v).strip()).to_numpy()
        scan = frame[m.columns.scan_id].map(lambda v: str(v).strip()) if m.columns.scan_id else rel
        out["scan_id"] = scan.to_numpy()
        age = m.columns.age
        out["age"] = map_at_lines(frame[age], parse_age, path, age, lines).to_numpy() if age else None
        for name, vocab in VOCABULARY.items():
            table = getattr(m.values, name) or {v: v for v in vocab if v not in ("", "other")}
            values = LooseMap({raw: (value or None) for raw, value in table.items()})
            column = cols[name]
            mapped = map_at_lines(frame[column], values, path, column, lines) if column else None
            out[name] = None if mapped is None else mapped.to_numpy()
        return out

    def read(self, root: Path) -> AdapterResult:
        """Map the table under ``root`` to the manifest, as the mapping file declares."""
        m, root = self.mapping, Path(root)
        path = root / m.table
        frame, lines = read_table(path, m.sheet, m.separator)
        report = MappingReport(site=m.site, rows_read=len(frame), notes=[f"mapped by {self.mapping_path}"])
        out = self._map(frame, lines, path, root)
        for reason, bad in (
            ("no image path in the table", out["rel"] == ""),
            ("no patient id in the table", out["patient_id"] == ""),
            ("view mapped to 'other' (not CC/MLO)", out["view"] == "other"),
        ):
            report.drop(reason, int(bad.sum()))
            out = out.loc[~bad]
        return finish(keep_existing_images(keep_cc_mlo(out, report), report), report)
