from __future__ import annotations

from pathlib import Path

import pytest
from site_fixtures_b import assert_rows, write_jpg, write_xlsx

from client.sites import AdapterError, get_adapter

NAN = float("nan")

# ---------------------------------------------------------------- KAU-BCMD

#: The sheet's real column names: an embedded newline, a trailing space, a double space.
KAU_HEADER = [
    "Percentage of\n grandular tissue(density)", "PatientID", "Patient age ", "Breast  type",
    "Breast view", "Assesment", "Image path",
]
KAU_ROWS = [
    ["0%-25%", 21, "45", "R", "CC", "BI-RADS 1", "BIRAD1/b1/2017_BC0021_ CC_R.dcm"],
    ["26%-50%", 21, "45", "L", "MLO", "BI-RADS 1", "BIRAD1\\b1\\2017_BC0021_ MLO_L.dcm"],
    # Blank side and view: the file name supplies them.
    ["51%-75%", 35, "52 ", None, None, "BI-RADS 3", "Birad3/b3/2018_BC0035_ CC_L.dcm"],
    [">75%", 40, "60", "R", "MLO", "BI-RADS 5", "Birad5/Birad5/2019_BC0040_ MLO_R.dcm"],  # no JPG
]
KAU_FILES = (
    "BIRAD1/b1/2017_BC0021_ CC_R.jpg", "BIRAD1/b1/2017_BC0021_ MLO_L.jpg", "Birad3/b3/2018_BC0035_ CC_L.jpg",
)


def make_kau(root: Path, rows: list[list] = KAU_ROWS, header: list[str] = KAU_HEADER) -> Path:
    # A decoy first sheet: the adapter must read the sheet named correctSheet.
    write_xlsx(root / "correctSheetlast.xlsx", {"Sheet1": [["x"], [1]], "correctSheet": [header, *rows]})
    for name in KAU_FILES:
        write_jpg(root / "KAU-BCMD" / name)
    return root


def test_kau_bcmd_rows(tmp_path):
    root = make_kau(tmp_path)
    result = get_adapter("KAU-BCMD").read(root)
    assert_rows(result.manifest, root, "KAU-BCMD", [
        ("21", "2017_BC0021_CC_R", "CC", "R", 45.0, "A", None, f"KAU-BCMD/{KAU_FILES[0]}"),
        ("21", "2017_BC0021_MLO_L", "MLO", "L", 45.0, "B", None, f"KAU-BCMD/{KAU_FILES[1]}"),
        ("35", "2018_BC0035_CC_L", "CC", "L", 52.0, "C", None, f"KAU-BCMD/{KAU_FILES[2]}"),
    ])
    report = result.report
    assert (report.rows_read, report.mapped) == (4, 3)
    assert dict(report.dropped) == {"image file not found": 1}
    assert any("BI-RADS only" in note for note in report.notes)


def test_kau_bcmd_column_names_match_up_to_whitespace(tmp_path):
    header = ["Percentage of grandular tissue(density)", "PatientID", "Patient age", "Breast type",
              "Breast view", "Assesment", "Image path"]
    result = get_adapter("KAU-BCMD").read(make_kau(tmp_path, header=header))
    assert sorted(result.manifest["density"]) == ["A", "B", "C"]


def test_kau_bcmd_bad_input(tmp_path):
    with pytest.raises(AdapterError, match="correctSheetlast.xlsx"):
        get_adapter("KAU-BCMD").read(tmp_path)
    header = [h for h in KAU_HEADER if h != "Patient age "]
    make_kau(tmp_path / "a", header=header, rows=[r[:2] + r[3:] for r in KAU_ROWS])
    with pytest.raises(AdapterError, match=r"xlsx: missing column 'Patient age '"):
        get_adapter("KAU-BCMD").read(tmp_path / "a")
    rows = [list(r) for r in KAU_ROWS]
    rows[2][0] = "80%"
    make_kau(tmp_path / "b", rows)
    column = r"'Percentage of\\n grandular tissue\(density\)'"
    with pytest.raises(AdapterError, match=rf"correctSheetlast\.xlsx: line 4, column {column}.*80%"):
        get_adapter("KAU-BCMD").read(tmp_path / "b")
    write_xlsx(tmp_path / "c" / "correctSheetlast.xlsx", {"Sheet1": [KAU_HEADER]})
    with pytest.raises(AdapterError, match="no sheet 'correctSheet'"):
        get_adapter("KAU-BCMD").read(tmp_path / "c")


# ---------------------------------------------------------------- MMD

def make_mmd(root: Path) -> Path:
    base = root / "Mammogram Mastery" / "Breast Cancer Dataset"
    for name in ("Cancer/c1.jpg", "Cancer/c2.jpg", "Non-Cancer/n1.jpg"):
        write_jpg(base / "Original Dataset" / name)
    for name in ("Cancer/c1_aug1.jpg", "Cancer/c1_aug2.jpg", "Non-Cancer/n1_aug1.jpg"):
        write_jpg(base / "Augmented Dataset" / name)
    return base


def test_mmd_rows_and_augmented_copies_counted(tmp_path):
    base = make_mmd(tmp_path)
    result = get_adapter("MMD").read(tmp_path)
    original = base.relative_to(tmp_path) / "Original Dataset"
    assert_rows(result.manifest, tmp_path, "MMD", [
        ("c1", "Cancer/c1", None, None, NAN, None, "malignant", str(original / "Cancer/c1.jpg")),
        ("c2", "Cancer/c2", None, None, NAN, None, "malignant", str(original / "Cancer/c2.jpg")),
        ("n1", "Non-Cancer/n1", None, None, NAN, None, "healthy", str(original / "Non-Cancer/n1.jpg")),
    ])
    report = result.report
    assert (report.rows_read, report.mapped) == (6, 3)
    assert dict(report.dropped) == {"augmented copy (would leak across the split)": 3}


def test_mmd_bad_input(tmp_path):
    with pytest.raises(AdapterError, match="'Original Dataset'"):
        get_adapter("MMD").read(tmp_path)
    write_jpg(make_mmd(tmp_path) / "Original Dataset" / "Benign" / "b1.jpg")
    with pytest.raises(AdapterError, match=r"Original Dataset: class folder 'Benign'"):
        get_adapter("MMD").read(tmp_path)
