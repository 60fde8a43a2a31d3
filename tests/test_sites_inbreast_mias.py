from __future__ import annotations

from pathlib import Path

import pytest
from site_fixtures_a import manifest_table, write_csv, write_dicom, write_pgm

from client.sites import get_adapter
from client.sites.base import AdapterError

INBREAST = ["Patient ID", "Patient age", "Laterality", "View", "Acquisition date", "File Name", "ACR",
            "Bi-Rads"]
COLS = ["scan_id", "patient_id", "view", "laterality", "density", "diagnosis", "image_path"]
H1, H2 = "6c613a14b80a8591", "e2bc7d5ff1b9ec58"
INB_ROWS = [
    ["removed", "removed", "R", "CC", "201001", "22678622", "4", "1"],
    ["removed", "removed", "L", "CC", "201001", "22678646", "4", "3"],
    ["removed", "removed", "R", "MLO", "201001", "53582540", " " * 40, "1"],
    ["removed", "removed", "L", "FB", "201001", "50994300", "2", "2"],
    ["removed", "removed", "L", "MLO", "201001", "22678694", "1", "4a"],  # no DICOM
    ["removed", "removed", "R", "CC", "201001", "53582567", "2", "1"],
]


def _inbreast(root: Path, rows: list[list[str]] = INB_ROWS) -> None:
    write_csv(root / "INbreast.csv", INBREAST, rows, delimiter=";")
    for name, case, side, view in [("22678622", H1, "R", "CC"), ("22678646", H1, "L", "CC"),
                                   ("53582540", H2, "R", "MLO"), ("53582567", H2, "R", "CC"),
                                   ("50994300", H2, "L", "FB")]:
        write_dicom(root / "AllDICOMs" / f"{name}_{case}_MG_{side}_{view}_ANON.dcm", laterality=side)


def _inbreast_expected(ext: str = "csv") -> list[tuple]:
    path = "AllDICOMs/{}_{}_MG_{}_{}_ANON.dcm"
    return sorted([
        ("22678622", H1, "CC", "R", "D", None, path.format("22678622", H1, "R", "CC")),
        ("22678646", H1, "CC", "L", "D", None, path.format("22678646", H1, "L", "CC")),
        ("53582540", H2, "MLO", "R", None, None, path.format("53582540", H2, "R", "MLO")),
        ("53582567", H2, "CC", "R", "B", None, path.format("53582567", H2, "R", "CC")),
    ])


def test_inbreast_csv_maps_row_by_row(tmp_path: Path) -> None:
    _inbreast(tmp_path)
    result = get_adapter("INbreast").read(tmp_path)
    assert manifest_table(result.manifest, tmp_path, COLS) == _inbreast_expected()
    assert result.manifest["age"].isna().all() and set(result.manifest["site"]) == {"INbreast"}
    # Patients inferred from the case hash: two cases, two images each.
    assert result.manifest.groupby("patient_id").size().to_dict() == {H1: 2, H2: 2}
    report = result.report
    assert report.rows_read == 6 and report.mapped == 4
    assert report.dropped == {"view 'FB' is not CC/MLO": 1, "image file not found": 1}
    assert any("BI-RADS" in n for n in report.notes)


def test_inbreast_xls_fallback(tmp_path: Path) -> None:
    xlwt = pytest.importorskip("xlwt")
    _inbreast(tmp_path)
    (tmp_path / "INbreast.csv").unlink()
    book = xlwt.Workbook()
    sheet = book.add_sheet("Sheet1")
    for c, name in enumerate(INBREAST + ["Mass ", "Findings Notes (in Portuguese)"]):
        sheet.write(0, c, name)
    for r, row in enumerate(INB_ROWS, start=1):
        for c, value in enumerate(row):
            # Numbers as xls numbers; one ACR carries the stray quote of the real sheet.
            cell = float(value) if value.strip().isdigit() and c != 6 else value
            sheet.write(r, c, "4'" if (r, c) == (1, 6) else cell)
    book.save(str(tmp_path / "INbreast.xls"))
    result = get_adapter("INbreast").read(tmp_path)
    assert manifest_table(result.manifest, tmp_path, COLS) == _inbreast_expected()


def test_inbreast_xls_cells_as_xlrd_returns_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without xlwt: xlrd gives numbers as floats and keeps the stray quote of an ACR cell."""
    import pandas as pd

    from client.sites import inbreast

    _inbreast(tmp_path)
    (tmp_path / "INbreast.csv").unlink()
    (tmp_path / "INbreast.xls").write_bytes(b"")
    cells = [[float(v) if c in (4, 5, 6) and v.strip() else v for c, v in enumerate(row)] for row in INB_ROWS]
    cells[0][6] = "4'"
    frame = pd.DataFrame(cells, columns=[*INBREAST[:-1], "Bi-Rads "], dtype=object)
    seen: list[str] = []

    def fake_read_excel(path: Path, engine: str, dtype: object) -> pd.DataFrame:
        seen.append(engine)
        return frame

    monkeypatch.setattr(inbreast.pd, "read_excel", fake_read_excel)
    result = get_adapter("INbreast").read(tmp_path)
    assert seen == ["xlrd"]
    assert manifest_table(result.manifest, tmp_path, COLS) == _inbreast_expected()


def test_inbreast_bad_input(tmp_path: Path) -> None:
    with pytest.raises(AdapterError, match=r"INbreast.csv or INbreast.xls"):
        get_adapter("INbreast").read(tmp_path)
    bad = [list(r) for r in INB_ROWS]
    bad[5][6] = "5"
    _inbreast(tmp_path, bad)
    with pytest.raises(AdapterError, match=r"INbreast.csv: line 7, column 'ACR': unknown value '5'"):
        get_adapter("INbreast").read(tmp_path)
    bad[5][6], bad[1][2] = "2", "B"
    _inbreast(tmp_path, bad)
    with pytest.raises(AdapterError, match=r"INbreast.csv: line 3, column 'Laterality': unknown value 'B'"):
        get_adapter("INbreast").read(tmp_path)
    write_csv(tmp_path / "INbreast.csv", INBREAST[:6] + ["Bi-Rads"], [r[:6] + r[7:] for r in INB_ROWS], ";")
    with pytest.raises(AdapterError, match=r"INbreast.csv: missing column 'ACR'"):
        get_adapter("INbreast").read(tmp_path)


INFO = """REFNUM BG CLASS SEVERITY X Y RADIUS
mdb001 G CIRC B 535 425 197
mdb002 G CIRC B 522 280 69
mdb003 D NORM \nmdb004 D NORM \nmdb005 F CIRC B 477 133 30
mdb005 F CIRC B 500 168 26
mdb006 F NORM \nmdb059 F CIRC B
mdb144 F MISC B 233 994 29
mdb144 F MISC M 313 540 27
mdb212 G NORM
mdb216 D CALC M  \n"""


def _mias(root: Path, info: str = INFO) -> None:
    (root / "all-mias").mkdir(parents=True, exist_ok=True)
    (root / "all-mias" / "Info.txt").write_text(info)
    for n in (1, 2, 3, 4, 5, 59, 144, 212, 216):  # mdb006 has no image
        write_pgm(root / "all-mias" / f"mdb{n:03d}.pgm")


def test_mias_maps_row_by_row(tmp_path: Path) -> None:
    _mias(tmp_path)
    result = get_adapter("MIAS").read(tmp_path)
    cols = ["scan_id", "patient_id", "view", "laterality", "density", "diagnosis"]
    expected = [
        ("mdb001", "mdb001-002", "MLO", "R", "B", "benign"),
        ("mdb002", "mdb001-002", "MLO", "L", "B", "benign"),
        ("mdb003", "mdb003-004", "MLO", "R", "C", "healthy"),
        ("mdb004", "mdb003-004", "MLO", "L", "C", "healthy"),
        ("mdb005", "mdb005-006", "MLO", "R", "A", "benign"),
        ("mdb059", "mdb059-060", "MLO", "R", "A", "benign"),
        ("mdb144", "mdb143-144", "MLO", "L", "A", "malignant"),
        ("mdb212", "mdb211-212", "MLO", "L", "B", "healthy"),
        ("mdb216", "mdb215-216", "MLO", "L", "C", "malignant"),
    ]
    got = manifest_table(result.manifest, tmp_path, [*cols, "image_path"])
    assert [row[:-1] for row in got] == expected
    assert [row[-1] for row in got] == [f"all-mias/{row[0]}.pgm" for row in expected]
    assert result.manifest["age"].isna().all()
    report = result.report
    assert report.rows_read == 12 and report.mapped == 9
    assert report.dropped == {"further Info.txt row of the same image (merged; malignant wins)": 2,
                              "image file not found": 1}
    assert any("F/G/D" in n for n in report.notes)


def test_mias_bad_input(tmp_path: Path) -> None:
    with pytest.raises(AdapterError, match=r"Info.txt"):
        get_adapter("MIAS").read(tmp_path)
    _mias(tmp_path, INFO.replace("mdb212 G NORM", "mdb212 X NORM"))
    with pytest.raises(AdapterError, match=r"Info.txt: line 12, column 'BG': unknown value 'X'"):
        get_adapter("MIAS").read(tmp_path)
    _mias(tmp_path, INFO.replace("mdb059 F CIRC B", "mdb059 F LUMP B"))
    with pytest.raises(AdapterError, match=r"Info.txt: line 9, column 'CLASS': unknown value 'LUMP'"):
        get_adapter("MIAS").read(tmp_path)
    _mias(tmp_path, INFO.replace("mdb059 F CIRC B", "mdb059 F"))
    with pytest.raises(AdapterError, match=r"Info.txt: line 9: expected 'mdbNNN BG CLASS"):
        get_adapter("MIAS").read(tmp_path)
