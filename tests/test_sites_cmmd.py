from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import tomllib
from site_fixtures_a import manifest_table, write_csv, write_dicom

from client.sites import ADAPTERS, get_adapter
from client.sites.base import AdapterError

CLINICAL = ["ID1", "LeftRight", "Age", "number", "abnormality", "classification", "subtype"]
ROWS = [
    ["D1-0001", "R", 44, 1, "calcification", "Benign", None],
    ["D1-0002", "L", 56, 2, "mass", "Malignant", "Luminal A"],
    ["D1-0002", "R", 56, 2, "mass", "Benign", None],
    ["D2-0003", "L", 70, 1, "both", "Malignant", None],  # no images on disk
]
STUDY = "CMMD/{}/07-18-2010-NA-NA-79377/1.000000-NA-70244/{}"
COLS = ["scan_id", "patient_id", "view", "laterality", "age", "diagnosis", "image_path"]


def _release(root: Path, rows: list[list[object]] = ROWS) -> None:
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=CLINICAL).to_excel(root / "CMMD_clinicaldata_revision.xlsx", index=False)
    write_csv(root / "metadata.csv", ["Subject ID", "Number of Images", "File Location"],
              [["D1-0001", "2", "./CMMD/D1-0001/07-18-2010-NA-NA-79377/1.000000-NA-70244"]])
    images = [  # patient, file, laterality, view code, view position
        ("D1-0001", "1-1.dcm", "R", "CC", None),
        ("D1-0001", "1-2.dcm", "R", "MLO", None),
        ("D1-0001", "1-3.dcm", "L", "CC", None),  # left breast has no clinical row
        ("D1-0002", "1-1.dcm", "L", "CC", None),
        ("D1-0002", "1-2.dcm", "L", None, "MLO"),  # no ViewCodeSequence: ViewPosition fallback
        ("D1-0002", "1-3.dcm", "R", "CC", "MLO"),  # the code wins over ViewPosition
        ("D1-0002", "1-4.dcm", "R", "ML", None),  # mediolateral: not CC/MLO
        ("D1-0002", "1-5.dcm", None, "CC", None),  # no ImageLaterality
        ("D1-0009", "1-1.dcm", "L", "CC", None),  # patient not in the sheet
    ]
    for pid, name, side, code, position in images:
        write_dicom(root / STUDY.format(pid, name), patient_id=pid, laterality=side, view_code=code,
                    view_position=position)
    (root / STUDY.format("D1-0002", "1-6.dcm")).write_bytes(b"not a dicom file")


def test_cmmd_maps_dicom_tags_row_by_row(tmp_path: Path) -> None:
    _release(tmp_path)
    result = get_adapter("CMMD").read(tmp_path)
    def row(pid: str, name: str, view: str, side: str, age: float, label: str) -> tuple:
        return (STUDY.format(pid, name), pid, view, side, age, label, STUDY.format(pid, name + ".dcm"))

    expected = sorted([
        row("D1-0001", "1-1", "CC", "R", 44.0, "benign"),
        row("D1-0001", "1-2", "MLO", "R", 44.0, "benign"),
        row("D1-0002", "1-1", "CC", "L", 56.0, "malignant"),
        row("D1-0002", "1-2", "MLO", "L", 56.0, "malignant"),
        row("D1-0002", "1-3", "CC", "R", 56.0, "benign"),
    ])
    assert manifest_table(result.manifest, tmp_path, COLS) == expected
    assert result.manifest["density"].isna().all() and set(result.manifest["site"]) == {"CMMD"}
    report = result.report
    assert report.rows_read == 10 and report.mapped == 5
    assert report.dropped == {
        "breast has no clinical row": 2,
        "view (ViewCodeSequence/ViewPosition) missing or not CC/MLO": 1,
        "ImageLaterality missing or not L/R": 1,
        "unreadable DICOM header": 1,
    }
    assert any("density" in n for n in report.notes)


def test_cmmd_bad_input(tmp_path: Path) -> None:
    with pytest.raises(AdapterError, match="CMMD_clinicaldata_revision.xlsx"):
        get_adapter("CMMD").read(tmp_path)
    bad = [list(r) for r in ROWS]
    bad[2][5] = "Suspicious"  # Excel row 4
    _release(tmp_path, bad)
    with pytest.raises(AdapterError, match=r"xlsx: line 4, column 'classification': unknown value 'Suspic"):
        get_adapter("CMMD").read(tmp_path)
    bad[2][5], bad[1][1] = "Benign", "B"
    _release(tmp_path, bad)
    with pytest.raises(AdapterError, match=r"xlsx: line 3, column 'LeftRight': unknown value 'B'"):
        get_adapter("CMMD").read(tmp_path)
    cols = [c for c in CLINICAL if c != "classification"]
    pd.DataFrame([r[:5] + r[6:] for r in ROWS], columns=cols).to_excel(
        tmp_path / "CMMD_clinicaldata_revision.xlsx", index=False)
    with pytest.raises(AdapterError, match=r"xlsx: missing column 'classification'"):
        get_adapter("CMMD").read(tmp_path)


def test_adapter_names_are_the_configured_site_names() -> None:
    config = tomllib.loads((Path(__file__).parents[1] / "configs" / "sites.toml").read_text())
    names = {site["name"] for site in config["site"]}
    mine = {"CBIS-DDSM", "RSNA", "INbreast", "MIAS", "CMMD"}
    assert mine <= names
    assert mine <= {cls.name for cls in ADAPTERS.values()}
