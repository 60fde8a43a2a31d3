from __future__ import annotations

import math
import re
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import stats

from server.history import final_round
from server.report import build_report
from sim.experiment import load_experiment
from sim.runner import run_pooled_experiment
from sim.simulate import run_federated_experiment

TINY = """
name = "tiny"
[data]
scale = 0.05
[study]
fms = ["mammoclip", "medclip"]
tasks = ["density"]
methods = ["unified", "groupdro"]
[protocol]
search = false
epochs = 4
[federated]
rounds = 3
local_steps = 4
methods = ["unified", "groupdro"]
"""
FED_LABELS = {"Unified (fed.)": "unified", "GroupDRO (fed.)": "groupdro"}
POOLED_LABELS = {"Unified": "unified", "GroupDRO": "groupdro"}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    (root / "exp.toml").write_text(TINY)
    exp = load_experiment(root / "exp.toml")
    pooled = run_pooled_experiment(exp, root / "pooled", show_progress=False).metrics
    exp = replace(exp, data=replace(exp.data, store=str(root / "pooled" / "store")))
    federated = run_federated_experiment(exp, root / "federated", show_progress=False)
    report = build_report(root, root / "report", tsne_per_site=40)
    return root, report, pooled, federated


def test_parallel_federations_write_the_serial_history(results, tmp_path):
    # Four in-process federations on two spawned workers: the same rows, in job order.
    root, _, _, federated = results
    exp = load_experiment(root / "exp.toml")
    exp = replace(exp, data=replace(exp.data, store=str(root / "pooled" / "store")))
    parallel = run_federated_experiment(exp, tmp_path / "f", show_progress=False, workers=2)
    pd.testing.assert_frame_equal(parallel, federated)
    assert (tmp_path / "f" / "table3.md").read_text() == (root / "federated" / "table3.md").read_text()


def _table3_csv(root) -> pd.DataFrame:
    table = pd.read_csv(root / "report" / "tables" / "table3_density.csv")
    return table.assign(marks=table["marks"].fillna(""))  # CSV cannot tell "" from missing


def _f1(h: pd.DataFrame) -> pd.DataFrame:
    return h[(h.metric == "f1") & (h["class"] == "macro") & (h.group_kind == "site") & (h.site != "all")]


def _vectors(pooled: pd.DataFrame, federated: pd.DataFrame, fm: str) -> dict[str, pd.Series]:
    """Every Table 3 row's per-site F1, recomputed here with plain pandas."""
    p, f = _f1(pooled[pooled.fm == fm]), _f1(final_round(federated[federated.fm == fm]))
    m = p[p.trained_on != "all"].pivot(index="trained_on", columns="site", values="value")
    out = {"Indiv. (internal)": pd.Series({j: m.loc[j, j] for j in m.columns if j in m.index}).dropna(),
           "Indiv. (external)": pd.Series({j: m.loc[m.index != j, j].mean() for j in m.columns}),
           "Indiv. (overall)": m.mean()}
    for label, method in POOLED_LABELS.items():
        out[label] = p[(p.trained_on == "all") & (p.method == method)].set_index("site")["value"]
    for label, method in FED_LABELS.items():
        out[label] = f[f.method == method].set_index("site")["value"]
    return out


def test_report_references_every_png_and_every_png_exists(results):
    root, report, _, _ = results
    text = report.read_text()
    linked = set(re.findall(r"!\[[^\]]*\]\((figures/[^)]+\.png)\)", text))
    on_disk = {f"figures/{p.name}" for p in (root / "report" / "figures").glob("*.png")}
    assert linked == on_disk
    assert {"figures/tsne_mammoclip.png", "figures/tsne_medclip.png",
            "figures/aod_pooled_medclip_density.png", "figures/aod_federated_mammoclip_density.png",
            "figures/curves_medclip_density.png", "figures/weights_medclip_density.png"} <= on_disk
    for heading in ("## Table 3", "## Federated vs pooled", "## Feature embeddings",
                    "## Fairness: AOD", "## Federated training curves"):
        assert heading in text
    assert text.count("*How to read this:*") >= 6


def test_pngs_are_valid_and_at_least_150_dpi(results):
    root, _, _, _ = results
    pngs = sorted((root / "report" / "figures").glob("*.png"))
    assert pngs
    for path in pngs:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            assert im.format == "PNG"
            assert min(im.info["dpi"]) >= 150 - 0.5, (path.name, im.info.get("dpi"))
            assert min(im.size) >= 600, (path.name, im.size)  # ≥ 4 in at 150 dpi
    assert not list((root / "report").rglob("*.tmp"))  # atomic writes left nothing behind


def test_table3_numbers_match_a_pandas_recomputation(results):
    root, report, pooled, federated = results
    table = _table3_csv(root)
    text = report.read_text()
    for fm in ("mammoclip", "medclip"):
        for row, values in _vectors(pooled, federated, fm).items():
            cell = table[(table.row == row) & (table.fm == fm)].iloc[0]
            assert cell["mean"] == pytest.approx(values.mean(), abs=1e-12), (fm, row)
            assert cell["sd"] == pytest.approx(values.std(ddof=1), abs=1e-12), (fm, row)
            assert cell["n_sites"] == len(values)
            assert f"{values.mean():.2f} ± {values.std(ddof=1):.2f}" in text
    assert "| GroupDRO (fed.) |" in text and "| Indiv. (overall) |" in text
    trained = table[~table.row.str.startswith("Indiv.")]
    for fm, part in trained.groupby("fm"):
        best = part.loc[part["mean"].idxmax()]
        assert f"**{best['mean']:.2f} ± {best['sd']:.2f}**" in text, fm


def _p(x: pd.Series, y: pd.Series, alternative: str) -> float:
    sites = sorted(set(x.dropna().index) & set(y.dropna().index))
    a, b = x[sites].to_numpy(float), y[sites].to_numpy(float)
    if len(sites) < 2 or np.all(a == b):
        return math.nan
    return float(stats.wilcoxon(a, b, alternative=alternative).pvalue)


def test_wilcoxon_markers_match_scipy(results):
    root, _, pooled, federated = results
    table = _table3_csv(root)
    ref = {fm: _vectors(pooled, federated, fm) for fm in ("mammoclip", "medclip")}
    seen_marks = ""
    for cell in table.to_dict("records"):
        rows = ref[cell["fm"]]
        vs_unified = rows["Unified"] if cell["row"] != "Unified" else pd.Series(dtype=float)
        vs_fm = ref["mammoclip"][cell["row"]] if cell["fm"] != "mammoclip" else pd.Series(dtype=float)
        p_up = _p(rows[cell["row"]], vs_unified, "greater")
        p_down = _p(rows[cell["row"]], vs_unified, "less")
        p_fm = _p(rows[cell["row"]], vs_fm, "less")
        for got, want in ((cell["p_vs_ref_method_greater"], p_up), (cell["p_vs_ref_method_less"], p_down),
                          (cell["p_vs_ref_fm_less"], p_fm)):
            assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want), cell
        marks = "".join(sym + ("**" if p < 0.01 else "*") for sym, p in
                        (("▲", p_up), ("▼", p_down), ("†", p_fm)) if np.isfinite(p) and p < 0.05)
        assert cell["marks"] == marks, cell
        seen_marks += marks
    assert "▼" in seen_marks  # Indiv. (external) is below Unified: the test is exercised


def test_comparison_csv_round_trips_and_matches(results):
    from server.compare import compare

    root, report, pooled, federated = results
    got = pd.read_csv(root / "report" / "tables" / "comparison.csv")
    want = compare(pooled, federated)
    pd.testing.assert_frame_equal(got, want, check_dtype=False, rtol=1e-12)
    last = _f1(final_round(federated))
    for r in got.to_dict("records"):
        fed = last[(last.method == r["method"]) & (last.fm == r["fm"])]["value"]
        assert r["federated_mean"] == pytest.approx(fed.mean())
        assert r["federated_worst"] == pytest.approx(fed.min())
    assert f"{got['pooled_mean'].iloc[0]:.3f} → {got['federated_mean'].iloc[0]:.3f}" in report.read_text()


def test_table3_csv_round_trips(results):
    from server.report import Results, table3_history
    from server.tables import table3_cells

    root, _, pooled, federated = results
    history, labels = table3_history(Results(root, pooled, federated, None))
    want = table3_cells(history, "density", ["mammoclip", "medclip"], labels).assign(task="density")
    got = _table3_csv(root)
    pd.testing.assert_frame_equal(got, want, check_dtype=False, rtol=1e-12)


def test_aod_heatmap_inputs_are_the_site_vs_rest_rows(results):
    from server.report import aod_panels

    _, _, pooled, _ = results
    part = pooled[(pooled.trained_on == "all") & (pooled.fm == "mammoclip")]
    panels = aod_panels(part)
    by_site, by_age = panels["GroupDRO"]
    assert list(by_site.columns) == ["A", "B", "C", "D"]
    assert [g for g in ("<40", "40-70", ">70") if g in by_age.index] == list(by_age.index)
    rows = part[(part.method == "groupdro") & (part.metric == "aod") & (part.site == "all")
                & (part.group_kind == "site")]
    assert len(rows) > 0
    for r in rows.to_dict("records"):
        assert by_site.loc[r["group"], r["class"]] == pytest.approx(r["value"], nan_ok=True)


def test_single_run_folders_and_cli(results, tmp_path):
    from sim.cli import main

    root, _, _, _ = results
    fed = build_report(root / "federated", tmp_path / "fed")
    text = fed.read_text()
    assert "Federated vs pooled" not in text and "(no feature store found" in text
    assert "| Unified (fed.) |" in text and "| Unified |" not in text
    assert {p.name for p in (tmp_path / "fed" / "figures").glob("*.png")} >= {
        "curves_mammoclip_density.png", "aod_federated_medclip_density.png"}
    assert main(["-q", "report", str(root / "federated"), "--out", str(tmp_path / "cli")]) == 0
    assert (tmp_path / "cli" / "report.md").is_file()
    assert main(["-q", "report", str(tmp_path / "nothing-here")]) == 2


def test_demo_ends_with_the_report(monkeypatch, tmp_path):
    import sim.cli as cli

    calls = []
    monkeypatch.setattr(cli, "_pooled", lambda args, quiet: calls.append("pooled"))
    monkeypatch.setattr(cli, "_simulate", lambda args, quiet: calls.append("simulate"))
    monkeypatch.setattr(cli, "_compare", lambda p, f, out: "")
    monkeypatch.setattr(cli, "_report", lambda results, out: calls.append(("report", results, out)))
    assert cli.main(["-q", "demo", "--out", str(tmp_path)]) == 0
    assert calls == ["pooled", "simulate", ("report", tmp_path, None)]
