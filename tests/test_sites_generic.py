from __future__ import annotations

from pathlib import Path

import pytest
from site_fixtures_b import assert_rows, write_dicom, write_jpg, write_xlsx

from client.sites import AdapterError, get_adapter
from client.sites.generic import GenericAdapter, load_mapping

TEMPLATE = Path(__file__).resolve().parents[1] / "configs" / "sites" / "lbmd.toml"
NAN = float("nan")

#: An export in the layout the LBMD template declares (export/lbmd_mammography.csv, images/).
LBMD_TABLE = """MRN,Accession,Age,View,Side,ACR,Pathology,File
M1,A1,053Y,CC,L,1,Normal,M1/a1.dcm
M1,A2,53,MLO,Left,2,normal,M1/a2.dcm
M2,A3,61 years,cc,Right,3,Malignant,M2/a3.dcm
M2,A4,,XCCL,R,4,Benign,M2/a4.dcm
M3,A5,70,MLO,R,,Not biopsied,M3/a5.dcm
M3,A6,70,CC,R,4,Benign,M3/missing.dcm
"""


def make_lbmd(root: Path, table: str = LBMD_TABLE) -> Path:
    (root / "export").mkdir(parents=True)
    (root / "export" / "lbmd_mammography.csv").write_text(table)
    for name in ("M1/a1", "M1/a2", "M2/a3", "M2/a4", "M3/a5"):
        write_dicom(root / "images" / f"{name}.dcm", None)
    return root


def test_template_mapping_reads_an_export_row_by_row(tmp_path):
    root = make_lbmd(tmp_path)
    result = get_adapter("generic", mapping=TEMPLATE).read(root)
    assert_rows(result.manifest, root, "LBMD", [
        ("M1", "A1", "CC", "L", 53.0, "A", "healthy", "images/M1/a1.dcm"),
        ("M1", "A2", "MLO", "L", 53.0, "B", "healthy", "images/M1/a2.dcm"),
        ("M2", "A3", "CC", "R", 61.0, "C", "malignant", "images/M2/a3.dcm"),
        ("M3", "A5", "MLO", "R", 70.0, None, None, "images/M3/a5.dcm"),
    ])
    report = result.report
    assert (report.rows_read, report.mapped) == (6, 4)
    assert dict(report.dropped) == {"view mapped to 'other' (not CC/MLO)": 1, "image file not found": 1}


def test_excel_table_with_image_format_and_default_values(tmp_path):
    write_xlsx(tmp_path / "meta.xlsx", {"notes": [["x"]], "scans": [
        ["id", "img", "proj", "lat", "grade"],
        ["p1", "001", "MLO", "R", "malignant"],
        ["p2", "002", "CC", "L", "healthy"],
    ]})
    write_jpg(tmp_path / "jpg" / "p1_001.jpg")
    write_jpg(tmp_path / "jpg" / "p2_002.jpg")
    mapping = tmp_path / "site.toml"
    mapping.write_text(
        'site = "Clinic"\ntable = "meta.xlsx"\nsheet = "scans"\nimage_root = "jpg"\n'
        'image_format = "{id}_{img}.jpg"\n'
        '[columns]\npatient_id = "id"\nview = "proj"\nlaterality = "lat"\ndiagnosis = "grade"\n'
    )
    result = GenericAdapter(mapping).read(tmp_path)
    assert_rows(result.manifest, tmp_path, "Clinic", [
        ("p1", "p1_001.jpg", "MLO", "R", NAN, None, "malignant", "jpg/p1_001.jpg"),
        ("p2", "p2_002.jpg", "CC", "L", NAN, None, "healthy", "jpg/p2_002.jpg"),
    ])


def write_mapping(path: Path, extra: str = "", values: str = "") -> Path:
    head = f'site = "X"\ntable = "t.csv"\nimage = "f"\n{extra}'
    path.write_text(f'{head}[columns]\npatient_id = "p"\ndensity = "d"\n{values}')
    return path


def test_mapping_validation_names_file_and_key(tmp_path):
    path = write_mapping(tmp_path / "m.toml", extra='colour = "red"\n')
    with pytest.raises(AdapterError, match=r"m\.toml: unknown key 'colour'"):
        GenericAdapter(path)
    path = write_mapping(tmp_path / "m.toml", values='[values.density]\n"1" = "E"\n')
    with pytest.raises(AdapterError, match=r"m\.toml: values\.density\.'1' = 'E'; expected one of"):
        GenericAdapter(path)
    path = write_mapping(tmp_path / "m.toml", values='[values.diagnosis]\nMalignant = "malignant"\n')
    with pytest.raises(AdapterError, match=r"values\.diagnosis is given but columns\.diagnosis is not set"):
        GenericAdapter(path)
    path = write_mapping(tmp_path / "m.toml", extra='image_format = "{f}"\n')
    with pytest.raises(AdapterError, match="exactly one of 'image'"):
        GenericAdapter(path)
    (tmp_path / "n.toml").write_text('site = "X"\ntable = "t.csv"\nimage = "f"\n[columns]\npatient = "p"\n')
    with pytest.raises(AdapterError, match=r"n\.toml\.columns: unknown key 'patient'"):
        GenericAdapter(tmp_path / "n.toml")
    assert load_mapping(TEMPLATE).site == "LBMD"


def test_bad_table_values_name_file_line_and_column(tmp_path):
    mapping = write_mapping(tmp_path / "m.toml", values='[values.density]\n"1" = "A"\n"2" = "B"\n')
    (tmp_path / "t.csv").write_text("p,d,f\na,1,x.jpg\nb,2,y.jpg\nc,5,z.jpg\n")
    with pytest.raises(AdapterError, match=r"t\.csv: line 4, column 'd': unknown value '5'"):
        GenericAdapter(mapping).read(tmp_path)
    (tmp_path / "t.csv").write_text("p,f\na,x.jpg\n")
    with pytest.raises(AdapterError, match=r"t\.csv: missing column 'd'"):
        GenericAdapter(mapping).read(tmp_path)
    (tmp_path / "t.csv").unlink()
    with pytest.raises(AdapterError, match=r"t\.csv: table not found"):
        GenericAdapter(mapping).read(tmp_path)


def test_separator_and_missing_images_counted(tmp_path):
    mapping = write_mapping(tmp_path / "m.toml", extra='separator = ";"\n')
    (tmp_path / "t.csv").write_text("p;d;f\na;A;x.jpg\nb;B;y.jpg\nc;C;\n")
    write_jpg(tmp_path / "x.jpg")
    result = GenericAdapter(mapping).read(tmp_path)
    assert result.manifest["scan_id"].tolist() == ["x.jpg"]
    assert dict(result.report.dropped) == {"image file not found": 1, "no image path in the table": 1}
