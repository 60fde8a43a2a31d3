from __future__ import annotations

import pytest

from sim.config import ConfigError
from sim.sites import load_sites


def test_site_table_matches_table2(sites):
    assert [s.name for s in sites] == [
        "CBIS-DDSM", "RSNA", "INbreast", "MIAS", "CMMD", "VinDr-Mammo", "CDD-CESM",
        "KAU-BCMD", "MMD", "LBMD",
    ]
    by = {s.name: s for s in sites}
    assert [s.scans for s in sites] == [2844, 9594, 410, 322, 2742, 3709, 1003, 1774, 745, 3090]
    assert [s.patients for s in sites] == [1391, 1970, 115, 165, 1277, 930, 326, 442, 745, 696]
    assert by["CBIS-DDSM"].class_counts("diagnosis") == {"healthy": 371, "benign": 1253, "malignant": 1220}
    assert by["RSNA"].class_counts("density") == {"A": 529, "B": 2789, "C": 2861, "D": 343}
    assert not by["INbreast"].has_label("diagnosis") and not by["CMMD"].has_label("density")
    assert by["MMD"].class_counts("diagnosis")["benign"] == 0
    assert by["VinDr-Mammo"].age_mean == 44 and not by["MIAS"].has_age


def test_unknown_key_names_file_and_key(tmp_path):
    path = tmp_path / "sites.toml"
    path.write_text('[[site]]\nname = "X"\ncountry = "Y"\nscans = 3\npatients = 1\ncolour = "red"\n')
    with pytest.raises(ConfigError, match=r"sites\.toml.*'colour'"):
        load_sites(path)


def test_wrong_type_and_unknown_class_are_errors(tmp_path):
    path = tmp_path / "sites.toml"
    path.write_text('[[site]]\nname = "X"\ncountry = "Y"\nscans = "many"\npatients = 1\n')
    with pytest.raises(ConfigError, match=r"scans.*expected int"):
        load_sites(path)
    path.write_text('[[site]]\nname = "X"\ncountry = "Y"\nscans = 3\npatients = 1\ndensity = { E = 1 }\n')
    with pytest.raises(ConfigError, match="'E'"):
        load_sites(path)
