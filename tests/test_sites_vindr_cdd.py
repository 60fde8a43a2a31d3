from __future__ import annotations

import math
from pathlib import Path

import pytest
from site_fixtures_b import assert_rows, write_dicom, write_jpg, write_xlsx

from client.sites import AdapterError, get_adapter
from client.sites.tables import parse_age
from client.sites.vindr import dicom_age

# ---------------------------------------------------------------- VinDr-Mammo

VINDR_HEADER = (
    "study_id,series_id,image_id,laterality,view_position,height,width,breast_birads,breast_density,split"
)
VINDR_ROWS = [
    "s1,se1,i1,L,CC,8,6,BI-RADS 1,DENSITY A,training",
    "s1,se1,i2,L,MLO,8,6,BI-RADS 2,DENSITY B,training",
    "s1,se2,i3,R,CC,8,6,BI-RADS 1,DENSITY C,test",
    "s2,se3,i4,R,MLO,8,6,BI-RADS 4,DENSITY D,training",
    "s2,se3,i5,R,XCCL,8,6,BI-RADS 1,DENSITY D,training",
    "s3,se4,i6,L,CC,8,6,BI-RADS 1,DENSITY B,test",
]
#: PatientAge in each DICOM header; i6 has no file on disk.
DICOM_AGES = {"i1": "050Y", "i2": "050Y", "i3": "060Y", "i4": "045Y", "i5": "045Y"}


def make_vindr(root: Path, rows: list[str] = VINDR_ROWS, metadata: str | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "breast-level_annotations.csv").write_text("\n".join([VINDR_HEADER, *rows]) + "\n")
    for row in rows:
        study, _, image = row.split(",")[:3]
        if image in DICOM_AGES:
            write_dicom(root / "images" / study / f"{image}.dicom", DICOM_AGES[image])
    if metadata is not None:
        (root / "metadata.csv").write_text(metadata)
    return root


def vindr_expected(ages: tuple[float, float, float, float]) -> list[tuple]:
    return [
        ("s1", "i1", "CC", "L", ages[0], "A", None, "images/s1/i1.dicom"),
        ("s1", "i2", "MLO", "L", ages[1], "B", None, "images/s1/i2.dicom"),
        ("s1", "i3", "CC", "R", ages[2], "C", None, "images/s1/i3.dicom"),
        ("s2", "i4", "MLO", "R", ages[3], "D", None, "images/s2/i4.dicom"),
    ]


def test_vindr_ages_from_dicom_headers_without_metadata(tmp_path):
    root = make_vindr(tmp_path / "vindr-mammo" / "1.0.0")
    result = get_adapter("VinDr-Mammo").read(tmp_path / "vindr-mammo")
    assert_rows(result.manifest, root, "VinDr-Mammo", vindr_expected((50.0, 50.0, 60.0, 45.0)))
    report = result.report
    assert (report.rows_read, report.mapped) == (6, 4)
    assert dict(report.dropped) == {"view 'XCCL' is not CC/MLO": 1, "image file not found": 1}
    assert any("BI-RADS only" in note for note in report.notes)


@pytest.mark.parametrize(
    ("metadata", "ages"),
    [
        # i3's age is blank, so it comes from its DICOM header (060Y).
        ("SOP Instance UID,Patient's Age\ni1,053Y\ni2,053Y\ni3,\ni4,41\n", (53.0, 53.0, 60.0, 41.0)),
        ("Rows,PatientAge,SOPInstanceUID\n8,053Y,i1\n8,053Y,i2\n8,,i3\n8,041Y,i4\n", (53, 53, 60, 41.0)),
        # Joined on the study: i3 (study s1) takes s1's age.
        ("study_id,age\ns1,053Y\ns2,41\n", (53.0, 53.0, 53.0, 41.0)),
    ],
)
def test_vindr_ages_from_metadata_csv_with_dicom_fallback(tmp_path, metadata, ages):
    root = make_vindr(tmp_path, metadata=metadata)
    result = get_adapter("VinDr-Mammo").read(root)
    assert_rows(result.manifest, root, "VinDr-Mammo", vindr_expected(ages))


def test_vindr_metadata_without_age_column_falls_back_to_dicom(tmp_path):
    root = make_vindr(tmp_path, metadata="SOP Instance UID,Rows\ni1,8\n")
    result = get_adapter("VinDr-Mammo").read(root)
    assert result.manifest.sort_values("scan_id")["age"].tolist() == [50.0, 50.0, 60.0, 45.0]
    assert any("no patient-age column" in note for note in result.report.notes)


def test_vindr_bad_input(tmp_path):
    with pytest.raises(AdapterError, match="breast-level_annotations.csv"):
        get_adapter("VinDr-Mammo").read(tmp_path)
    root = make_vindr(tmp_path / "a", [r.replace("DENSITY C", "DENSITY E") for r in VINDR_ROWS])
    with pytest.raises(AdapterError, match=r"annotations\.csv: line 4, column 'breast_density'.*DENSITY E"):
        get_adapter("VinDr-Mammo").read(root)
    root = tmp_path / "b"
    root.mkdir()
    (root / "breast-level_annotations.csv").write_text("study_id,image_id,laterality,view_position\ns,i,L,CC")
    with pytest.raises(AdapterError, match=r"annotations\.csv: missing column 'breast_density'"):
        get_adapter("VinDr-Mammo").read(root)
    root = make_vindr(tmp_path / "c", metadata="SOP Instance UID,Patient's Age\ni1,053Y\ni2,old\n")
    with pytest.raises(AdapterError, match=r"metadata\.csv: line 3, column \"Patient's Age\""):
        get_adapter("VinDr-Mammo").read(root)


def test_age_parsing_and_header_only_dicom_read(tmp_path):
    raw = ("053Y", "45", " 45 years", "006M", "14D", 61, 47.5)
    assert [parse_age(v) for v in raw] == [53, 45, 45, 0.5, 14 / 365.25, 61, 47.5]
    with pytest.raises(ValueError):
        parse_age("old")
    assert dicom_age(str(write_dicom(tmp_path / "a.dicom", "071Y"))) == 71.0
    assert math.isnan(dicom_age(str(write_dicom(tmp_path / "b.dicom", None))))
    (tmp_path / "c.dicom").write_bytes(b"not a dicom")
    assert math.isnan(dicom_age(str(tmp_path / "c.dicom")))


# ---------------------------------------------------------------- CDD-CESM

CDD_HEADER = [
    "Image_name", "Patient_ID", "Side", "Type", "Age", "Breast density (ACR)", "BIRADS", "Findings",
    "View", "Tags", "Machine", "Pathology Classification/ Follow up",
]


def cdd_row(name, pid, side, kind, age, density, birads, view, pathology):
    return [name, pid, side, kind, age, density, birads, "mass", view, "", "GE", pathology]


CDD_ROWS = [
    cdd_row("P1_L_DM_MLO", 1, "L", "DM", 45, 2, "2$2", "MLO", "Normal"),
    cdd_row("P1_L_CM_MLO", 1, "L", "CESM", 45, 2, "2$2", "MLO", "Normal"),
    [None] * 12,  # a blank spreadsheet row: skipped, line numbers still count it
    cdd_row("P2_R_DM_ CC ", 2, "R", "DM", 60, "4", "5", "CC", "Malignant"),
    cdd_row("P3_L_DM_CC", 3, "L ", "DM", "38", 1, "4$3$4", "CC", "Benign"),
    cdd_row("P4_R_DM_MLO", 4, "R", "DM", 50, 3, "3", "MLO", "Benign"),
]


def make_cdd(root: Path, rows: list[list] = CDD_ROWS, header: list[str] = CDD_HEADER) -> Path:
    # The release's per-finding sheets come with "all"; a decoy one is put first here.
    sheets = {"Mass": [header, rows[0]], "all": [header, *rows]}
    write_xlsx(root / "Radiology-manual-annotations.xlsx", sheets)
    low = root / "Low energy images of CDD-CESM"
    for name in ("P1_L_DM_MLO.jpg", "P2_R_DM_CC.jpg", "P3_L_ DM_CC.jpg"):  # P4 is missing
        write_jpg(low / name)
    write_jpg(root / "Subtracted images of CDD-CESM" / "P1_L_CM_MLO.jpg")
    return root


def test_cdd_cesm_rows(tmp_path):
    root = make_cdd(tmp_path)
    result = get_adapter("CDD-CESM").read(tmp_path)
    low = "Low energy images of CDD-CESM"
    assert_rows(result.manifest, root, "CDD-CESM", [
        ("1", "P1_L_DM_MLO", "MLO", "L", 45.0, "B", "healthy", f"{low}/P1_L_DM_MLO.jpg"),
        ("2", "P2_R_DM_CC", "CC", "R", 60.0, "D", "malignant", f"{low}/P2_R_DM_CC.jpg"),
        ("3", "P3_L_DM_CC", "CC", "L", 38.0, "A", "benign", f"{low}/P3_L_ DM_CC.jpg"),
    ])
    report = result.report
    assert (report.rows_read, report.mapped) == (5, 3)
    assert dict(report.dropped) == {
        "Type CESM (contrast-enhanced, not a mammogram)": 1, "image file not found": 1,
    }


def test_cdd_cesm_bad_input(tmp_path):
    with pytest.raises(AdapterError, match="Radiology-manual-annotations.xlsx"):
        get_adapter("CDD-CESM").read(tmp_path)
    rows = [list(r) for r in CDD_ROWS]
    rows[4][11] = "Suspicious"
    make_cdd(tmp_path / "a", rows)
    column = "'Pathology Classification/ Follow up'"
    with pytest.raises(AdapterError, match=rf"xlsx: line 6, column {column}.*Suspicious"):
        get_adapter("CDD-CESM").read(tmp_path / "a")
    header = [h for h in CDD_HEADER if h != "Breast density (ACR)"]
    make_cdd(tmp_path / "b", [r[:5] + r[6:] for r in CDD_ROWS], header)
    with pytest.raises(AdapterError, match=r"xlsx: missing column 'Breast density \(ACR\)'"):
        get_adapter("CDD-CESM").read(tmp_path / "b")
