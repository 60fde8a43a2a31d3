"""KAU-BCMD: sheet ``correctSheet`` of ``correctSheetlast.xlsx``; JPGs in ``BIRAD1/b1`` … ``Birad5/Birad5``.

The sheet's column names are odd (an embedded newline, a trailing space, a double space);
they are matched up to whitespace and case, and a missing one is reported by its real name.
Its ``Image path`` holds ``.dcm`` paths while the files are JPGs named like
``2017_BC0021_ CC_R.jpg`` (with a space): an image is found by its stem, spaces removed,
anywhere under the root. Diagnosis stays missing: ``Assesment`` is BI-RADS, not a diagnosis.
"""

from __future__ import annotations

import re
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

SHEET_FILE = "correctSheetlast.xlsx"
SHEET = "correctSheet"
DENSITY_COLUMN = "Percentage of\n grandular tissue(density)"
AGE_COLUMN = "Patient age "
SIDE_COLUMN = "Breast  type"
COLUMNS = (DENSITY_COLUMN, "PatientID", AGE_COLUMN, SIDE_COLUMN, "Breast view", "Image path")
DENSITY = LooseMap({"0%-25%": "A", "26%-50%": "B", "51%-75%": "C", ">75%": "D"})
SIDE = LooseMap({"L": "L", "R": "R", "Left": "L", "Right": "R"})


def image_key(raw: Any) -> str:
    """The stem of a sheet path (either slash, any suffix) without spaces: ``2017_BC0021_CC_R``."""
    name = re.split(r"[\\/]", str(raw).strip())[-1]
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return "".join(stem.split())


def name_parts(key: str) -> tuple[str, str]:
    """View and side from a stem ``{year}_BC{id}_{view}_{side}`` (blanks if it has fewer parts)."""
    parts = key.split("_")
    return (parts[-2], parts[-1]) if len(parts) >= 4 else ("", "")


@register_adapter
class KauBcmdAdapter(SiteAdapter):
    """KAU-BCMD (root: the folder holding the sheet and the BI-RADS folders)."""

    name = "KAU-BCMD"

    def read(self, root: Path) -> AdapterResult:
        """Map the sheet's rows to the manifest, each with its JPG."""
        path = find_in(Path(root), SHEET_FILE)
        frame, lines = read_excel(path, SHEET)
        frame = canonical_columns(frame, COLUMNS, path)
        report = MappingReport(site=self.name, rows_read=len(frame))
        keys = frame["Image path"].map(image_key)
        from_name = pd.DataFrame([name_parts(k) for k in keys], columns=["view", "side"], index=frame.index)
        # The sheet's view/side win; the file name fills only the cells the sheet leaves blank.
        view = frame["Breast view"].where(frame["Breast view"].str.strip() != "", from_name["view"])
        side = frame[SIDE_COLUMN].where(frame[SIDE_COLUMN].str.strip() != "", from_name["side"])
        images = index_images(Path(root), (".jpg", ".jpeg"), report)
        out = pd.DataFrame({"site": self.name, "scan_id": keys, "view": view, "diagnosis": None})
        out["patient_id"] = frame["PatientID"].map(lambda v: str(v).strip())
        out["laterality"] = map_at_lines(side, SIDE, path, SIDE_COLUMN, lines)
        out["age"] = map_at_lines(frame[AGE_COLUMN], parse_age, path, AGE_COLUMN, lines)
        out["density"] = map_at_lines(frame[DENSITY_COLUMN], DENSITY, path, DENSITY_COLUMN, lines)
        out["image_path"] = [str(images.get(k.casefold(), Path(root) / f"{k}.jpg")) for k in keys]
        blank = (keys == "").to_numpy()
        report.drop("no Image path", int(blank.sum()))
        out = keep_existing_images(keep_cc_mlo(out.loc[~blank], report), report)
        report.notes.append("diagnosis missing: KAU-BCMD grades BI-RADS only, which is not a diagnosis")
        report.notes.append("images matched by the stem of the sheet's .dcm Image path, spaces removed")
        return finish(out, report)
