"""mini-MIAS: ``Info.txt`` (space-separated, ragged, duplicate rows) and ``mdbNNN.pgm`` images.

The release has no age, view or patient id. Following its README: even numbers are left
breasts, odd numbers right, and each consecutive pair (mdb001 + mdb002) is one woman; all
images are MLO. Background tissue F/G/D (fatty, fatty-glandular, dense-glandular) has
three levels, mapped F→A, G→B, D→C; D (extremely dense) never occurs. An image with
several abnormality rows is one scan; malignant wins over benign over healthy.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from client.sites.base import (
    AdapterError,
    AdapterResult,
    MappingReport,
    SiteAdapter,
    finish,
    map_at_lines,
    register_adapter,
    require_metadata,
)

HEADER: tuple[str, ...] = ("REFNUM", "BG", "CLASS", "SEVERITY", "X", "Y", "RADIUS")
BACKGROUND = {"F": "A", "G": "B", "D": "C"}
CLASSES: tuple[str, ...] = ("CALC", "CIRC", "SPIC", "MISC", "ARCH", "ASYM", "NORM")
SEVERITY = {"B": "benign", "M": "malignant"}
_RANK = {"healthy": 0, "benign": 1, "malignant": 2}
REFNUM = re.compile(r"^mdb(\d{3})$")


def read_info(path: Path) -> tuple[pd.DataFrame, list[int]]:
    """Parse ``Info.txt`` by whitespace: short rows padded, header and blank lines skipped.

    Raises
    ------
    AdapterError
        For a line that is not ``mdbNNN BG CLASS ...``, naming file and line.
    """
    rows: list[list[str]] = []
    lines: list[int] = []
    for number, text in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        fields = text.split()
        if not fields or fields[0].upper() == "REFNUM":
            continue
        if not REFNUM.match(fields[0]) or len(fields) < 3:
            raise AdapterError(
                f"{path}: line {number}: expected 'mdbNNN BG CLASS [SEVERITY X Y RADIUS]', got {text!r}"
            )
        rows.append((fields + [""] * len(HEADER))[: len(HEADER)])
        lines.append(number)
    return pd.DataFrame(rows, columns=list(HEADER), dtype=object), lines


def _diagnosis(frame: pd.DataFrame, source: Path, lines: list[int]) -> pd.Series:
    """NORM → healthy; an abnormality's SEVERITY B/M → benign/malignant (blank → missing)."""
    map_at_lines(frame["CLASS"], {c: c for c in CLASSES}, source, "CLASS", lines)
    severity = map_at_lines(frame["SEVERITY"], SEVERITY, source, "SEVERITY", lines)
    return severity.where(frame["CLASS"] != "NORM", "healthy")


def _aggregate(rows: pd.DataFrame, report: MappingReport) -> pd.DataFrame:
    """One row per image: the highest-ranked diagnosis (malignant wins), the first density."""
    rank = rows["diagnosis"].map(_RANK).fillna(-1)
    rows = rows.assign(rank=rank).sort_values("rank", ascending=False, kind="stable")
    images = rows.groupby("scan_id", sort=True).agg(
        density=("density", "first"), diagnosis=("diagnosis", "first"), n=("rank", "size")
    ).reset_index()
    report.drop("further Info.txt row of the same image (merged; malignant wins)", len(rows) - len(images))
    return images


@register_adapter
class MIASAdapter(SiteAdapter):
    """mini-MIAS: one MLO scan per image number, patients as consecutive pairs."""

    name = "MIAS"

    def read(self, root: Path) -> AdapterResult:
        """Map ``Info.txt`` under ``root`` (or one level below) and find each ``mdbNNN.pgm``."""
        root = Path(root).resolve()
        source = require_metadata(root, ("Info.txt",), "mini-MIAS metadata")
        frame, lines = read_info(source)
        report = MappingReport(site=self.name, rows_read=len(frame))
        report.notes += [
            "density: background tissue F/G/D mapped to A/B/C (three levels; D never occurs)",
            "view MLO for all images; laterality from number parity; patient = consecutive pair",
            "no age in this release",
        ]
        rows = pd.DataFrame({
            "scan_id": frame["REFNUM"],
            "density": map_at_lines(frame["BG"], BACKGROUND, source, "BG", lines),
            "diagnosis": _diagnosis(frame, source, lines),
        })
        images = _aggregate(rows, report)
        number = images["scan_id"].str[3:].astype(int)
        first = number - (number + 1) % 2
        pgm = {p.name.lower(): p for p in sorted(root.rglob("*")) if p.suffix.lower() == ".pgm"}
        paths = [pgm.get(f"{s}.pgm") for s in images["scan_id"]]
        images = images.assign(
            site=self.name,
            patient_id=[f"mdb{a:03d}-{a + 1:03d}" for a in first],
            view="MLO",
            laterality=["L" if n % 2 == 0 else "R" for n in number],
            age=float("nan"),
            image_path=[str(p) for p in paths],
        )
        exists = pd.Series([p is not None for p in paths], index=images.index)
        report.drop("image file not found", int((~exists).sum()))
        return finish(images.loc[exists], report)
