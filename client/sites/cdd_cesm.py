"""CDD-CESM (TCIA): ``Radiology-manual-annotations.xlsx`` and the low-energy JPGs.

Only ``Type == DM`` rows are mammograms (the low-energy images); CESM rows are dropped and
counted. Image names in the sheet carry stray spaces, so names and files are matched with
all spaces removed. ``BIRADS`` may hold ``$``-joined grades; it is not read (no label uses it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from client.sites.base import (
    AdapterResult,
    MappingReport,
    SiteAdapter,
    finish,
    map_at_lines,
    register_adapter,
)
from client.sites.tables import (
    LooseMap,
    canonical_columns,
    find_in,
    index_images,
    keep_cc_mlo,
    keep_existing_images,
    parse_age,
    read_excel,
)

SHEET_FILE = "Radiology-manual-annotations.xlsx"
#: The workbook has ten sheets: "all" holds every image, the others one finding type each.
SHEET = "all"
IMAGE_DIR = "Low energy images of CDD-CESM"
COLUMNS = (
    "Image_name", "Patient_ID", "Side", "Type", "Age", "Breast density (ACR)", "View",
    "Pathology Classification/ Follow up",
)
DENSITY = LooseMap({**{str(i): c for i, c in enumerate("ABCD", start=1)}, **{c: c for c in "ABCD"}})
DIAGNOSIS = LooseMap({"Normal": "healthy", "Benign": "benign", "Malignant": "malignant"})
SIDE = LooseMap({"L": "L", "R": "R"})
TYPE = LooseMap({"DM": "DM", "CESM": "CESM"})
#: (manifest field, sheet column, raw value → manifest value)
FIELDS: tuple[tuple[str, str, Any], ...] = (
    ("laterality", "Side", SIDE),
    ("age", "Age", parse_age),
    ("density", "Breast density (ACR)", DENSITY),
    ("diagnosis", "Pathology Classification/ Follow up", DIAGNOSIS),
)


def clean_name(raw: str) -> str:
    """An ``Image_name`` without spaces or a ``.jpg`` suffix: ``"P1_L_DM_MLO"``."""
    name = "".join(str(raw).split())
    return name[:-4] if name.lower().endswith(".jpg") else name


@register_adapter
class CddCesmAdapter(SiteAdapter):
    """CDD-CESM as released on TCIA (root: the folder holding the sheet and image folders)."""

    name = "CDD-CESM"

    def read(self, root: Path) -> AdapterResult:
        """Map the DM rows of the annotation sheet to the manifest."""
        path = find_in(Path(root), SHEET_FILE)
        frame, lines = read_excel(path, prefer=SHEET)
        frame = canonical_columns(frame, COLUMNS, path)
        report = MappingReport(site=self.name, rows_read=len(frame))
        kind = map_at_lines(frame["Type"], TYPE, path, "Type", lines)
        names = frame["Image_name"].map(clean_name)
        folder = find_in(Path(root), IMAGE_DIR, is_dir=True)
        images = index_images(folder, (".jpg", ".jpeg"), report)
        out = pd.DataFrame({"site": self.name, "scan_id": names, "view": frame["View"]})
        out["patient_id"] = frame["Patient_ID"].map(lambda v: str(v).strip())
        for field, column, mapping in FIELDS:
            out[field] = map_at_lines(frame[column], mapping, path, column, lines)
        out["image_path"] = [str(images.get(n.casefold(), folder / f"{n}.jpg")) for n in names]
        cesm = (kind == "CESM").to_numpy()
        report.drop("Type CESM (contrast-enhanced, not a mammogram)", int(cesm.sum()))
        blank = (kind.isna() | (names == "")).to_numpy() & ~cesm
        report.drop("no Type or Image_name", int(blank.sum()))
        out = out.loc[~cesm & ~blank]
        out = keep_existing_images(keep_cc_mlo(out, report), report)
        report.notes.append("images matched by name with spaces removed, in " + IMAGE_DIR)
        return finish(out, report)
