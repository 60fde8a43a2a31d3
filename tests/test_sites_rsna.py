from __future__ import annotations

from pathlib import Path

import pytest
from site_fixtures_a import manifest_table, write_csv, write_dicom

from client.sites import get_adapter
from client.sites.base import AdapterError

TRAIN = ["site_id", "patient_id", "image_id", "laterality", "view", "age", "cancer", "biopsy", "invasive",
         "BIRADS", "implant", "density", "machine_id", "difficult_negative_case"]
TEST = ["site_id", "patient_id", "image_id", "laterality", "view", "age", "implant", "machine_id",
        "prediction_id"]
COLS = ["scan_id", "patient_id", "view", "laterality", "age", "density", "diagnosis", "image_path"]
ROWS = [
    # site, patient, image, lat, view, age, cancer, biopsy, invasive, BIRADS, implant, density, machine, dnc
    ["2", "10006", "462822612", "L", "CC", "61.0", "0", "0", "0", "", "0", "", "29", "False"],
    ["2", "10006", "1459541791", "L", "MLO", "61.0", "0", "1", "0", "0", "0", "B", "29", "False"],
    ["2", "10006", "1864590858", "R", "MLO", "61.0", "1", "1", "1", "0", "0", "B", "29", "False"],
    ["2", "10006", "1874946579", "R", "CC", "", "0", "0", "0", "1", "0", "C", "29", "False"],
    ["1", "10011", "220375232", "L", "AT", "55.0", "0", "0", "0", "1", "0", "A", "21", "True"],
    ["1", "10011", "270344397", "L", "LM", "55.0", "0", "0", "0", "1", "0", "A", "21", "True"],
    ["1", "10011", "541722628", "R", "CC", "55.0", "0", "0", "0", "1", "0", "D", "21", "True"],  # no file
    ["1", "10011", "1031443799", "R", "MLO", "55.0", "0", "0", "0", "1", "0", "D", "21", "True"],
]


def _release(root: Path, rows: list[list[str]] = ROWS) -> None:
    write_csv(root / "train.csv", TRAIN, rows)
    write_csv(root / "test.csv", TEST, [["2", "10008", "736471439", "L", "MLO", "81", "0", "49", "10008_L"]])
    for row in rows:
        if row[2] != "541722628":
            write_dicom(root / "train_images" / row[1] / f"{row[2]}.dcm", patient_id=row[1])


def test_rsna_release_maps_row_by_row(tmp_path: Path) -> None:
    _release(tmp_path)
    result = get_adapter("RSNA").read(tmp_path)
    expected = sorted([
        ("462822612", "10006", "CC", "L", 61.0, None, "healthy", "train_images/10006/462822612.dcm"),
        ("1459541791", "10006", "MLO", "L", 61.0, "B", "benign", "train_images/10006/1459541791.dcm"),
        ("1864590858", "10006", "MLO", "R", 61.0, "B", "malignant", "train_images/10006/1864590858.dcm"),
        ("1874946579", "10006", "CC", "R", None, "C", "healthy", "train_images/10006/1874946579.dcm"),
        ("1031443799", "10011", "MLO", "R", 55.0, "D", "healthy", "train_images/10011/1031443799.dcm"),
    ])
    assert manifest_table(result.manifest, tmp_path, COLS) == expected
    assert set(result.manifest["site"]) == {"RSNA"}
    report = result.report
    assert report.rows_read == 8 and report.mapped == 5
    assert report.dropped == {"view 'AT' is not CC/MLO": 1, "view 'LM' is not CC/MLO": 1,
                              "image file not found": 1}
    assert any("test.csv" in n for n in report.notes)


def test_rsna_bad_input(tmp_path: Path) -> None:
    with pytest.raises(AdapterError, match="train.csv"):
        get_adapter("RSNA").read(tmp_path)
    bad = [list(r) for r in ROWS]
    bad[2][11] = "E"  # density, line 4
    _release(tmp_path, bad)
    with pytest.raises(AdapterError, match=r"train.csv: line 4, column 'density': unknown value 'E'"):
        get_adapter("RSNA").read(tmp_path)
    bad[2][11], bad[6][6] = "B", "2"  # cancer flag 2 on line 8 (after two dropped views: still line 8)
    _release(tmp_path, bad)
    with pytest.raises(AdapterError, match=r"train.csv: line 8, column 'cancer': unknown value '2'"):
        get_adapter("RSNA").read(tmp_path)
    bad[6][6], bad[0][5] = "0", "sixty"
    _release(tmp_path, bad)
    with pytest.raises(AdapterError, match=r"line 2, column 'age': unknown value 'sixty'"):
        get_adapter("RSNA").read(tmp_path)
    write_csv(tmp_path / "train.csv", [c for c in TRAIN if c != "biopsy"], [r[:7] + r[8:] for r in ROWS])
    with pytest.raises(AdapterError, match=r"train.csv: missing column 'biopsy'"):
        get_adapter("RSNA").read(tmp_path)
