from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from server.history import METRIC_COLUMNS
from sim.cli import main, training_summary
from sim.experiment import load_experiment
from sim.runner import run_pooled_experiment

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "experiments"


def _experiment(tmp_path, body: str):
    path = tmp_path / "exp.toml"
    path.write_text(body)
    return load_experiment(path)


SMALL = """
name = "small"
[data]
scale = 0.15
[study]
fms = ["mammoclip", "medclip"]
tasks = ["diagnosis", "density"]
methods = ["unified"]
[protocol]
search = false
epochs = 30
"""


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pooled")
    exp = _experiment(out, SMALL)
    return run_pooled_experiment(exp, out / "run", show_progress=False), out / "run"


def _cell(cells: pd.DataFrame, row: str, fm: str) -> float:
    return float(cells[(cells.row == row) & (cells.fm == fm)]["mean"].iloc[0])


def test_paper_findings_hold_at_small_scale(small_run):
    from server.tables import table3_cells

    results, _ = small_run
    for task in ("diagnosis", "density"):
        cells = table3_cells(results.metrics, task, ["mammoclip", "medclip"], {"unified": "Unified"})
        for fm in ("mammoclip",):
            assert _cell(cells, "Indiv. (external)", fm) < _cell(cells, "Indiv. (internal)", fm)
            assert _cell(cells, "Unified", fm) > _cell(cells, "Indiv. (overall)", fm)
        assert _cell(cells, "Unified", "mammoclip") > _cell(cells, "Unified", "medclip")


def test_outputs_and_schema(small_run):
    results, out = small_run
    metrics = pd.read_parquet(out / "metrics.parquet")
    assert tuple(metrics.columns) == METRIC_COLUMNS
    assert set(metrics["mode"]) == {"pooled"} and metrics["round"].isna().all()
    assert {"f1", "eod", "aod", "tpr", "fpr"} <= set(metrics["metric"])
    # sites without the task's label never appear as test sites
    diag_sites = set(metrics[(metrics.task == "diagnosis") & (metrics.site != "all")]["site"])
    assert "INbreast" not in diag_sites and "CMDD" not in diag_sites and "CBIS-DDSM" in diag_sites
    dens = metrics[(metrics.task == "density") & (metrics.trained_on != "all")]
    assert "CMMD" not in set(dens.trained_on) and "MMD" not in set(dens.trained_on)
    table = (out / "table3.md").read_text()
    assert "### Diagnosis" in table and "Indiv. (overall)" in table and "| Unified |" in table
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "hparams.parquet", "metrics.parquet", "store", "table3.md"]
    seconds = pd.read_parquet(out / "hparams.parquet")["train_s"]
    assert len(seconds) == len(results.hparams) and (seconds > 0).all() and np.isfinite(seconds).all()


def test_training_summary_names_the_slowest_model():
    hp = pd.DataFrame({"fm": ["medclip", "mammoclip", "clip"], "task": ["density"] * 3,
                       "method": ["unified", "dann", "unified"], "trained_on": ["all", "all", "MIAS"],
                       "train_s": [30.0, 150.0, 6.0]})
    assert training_summary(hp) == ("3 models trained in 3.1 min of model time; "
                                    "slowest: mammoclip · density · dann (all), 2.5 min")
    assert training_summary(hp.iloc[[0, 2]]).startswith("2 models trained in 36 s of model time")


def test_skip_is_logged(tmp_path, caplog):
    exp = _experiment(tmp_path, SMALL.replace('"mammoclip", "medclip"', '"clip"').replace(
        'tasks = ["diagnosis", "density"]', 'tasks = ["diagnosis"]').replace("individual", "x"))
    with caplog.at_level(logging.INFO, logger="fedmammo"):
        run_pooled_experiment(exp, tmp_path / "o", show_progress=False)
    assert "skipping site INbreast for task diagnosis" in caplog.text


def test_unknown_key_is_one_error_and_no_output(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text(SMALL.replace("search = false", "serch = false"))
    assert main(["-q", "pooled", "--config", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "bad.toml" in err and "'serch'" in err
    assert not (tmp_path / "o").exists()


def test_nan_features_fail_cleanly_without_outputs(tmp_path, capsys):
    assert main(["-q", "synth", "--out", str(tmp_path / "s"), "--fm", "mammoclip", "--scale", "0.05"]) == 0
    f = tmp_path / "s" / "mammoclip" / "MIAS" / "features.npy"
    x = np.load(f)
    x[0, 0] = np.nan
    np.save(f, x)
    rc = main(["-q", "pooled", "--config", str(CONFIGS / "quick.toml"), "--out", str(tmp_path / "o"),
               "--store", str(tmp_path / "s")])
    assert rc == 2
    assert "MIAS/features.npy" in capsys.readouterr().err
    assert not (tmp_path / "o" / "metrics.parquet").exists()


def test_shipped_configs_load():
    paper = load_experiment(CONFIGS / "paper.toml")
    assert paper.study.fms == ("mammoclip", "medclip", "gloria", "clip", "dinov2")
    assert paper.protocol.search and paper.data.scale == 1.0
    quick = load_experiment(CONFIGS / "quick.toml")
    assert not quick.protocol.search and len(quick.study.fms) == 1


def test_parallel_workers_write_the_serial_results(small_run, tmp_path):
    # Two spawned workers train the same models; rows come back in the serial order.
    results, run = small_run
    exp = _experiment(tmp_path, SMALL.replace('scale = 0.15', f'scale = 0.15\nstore = "{run / "store"}"'))
    parallel = run_pooled_experiment(exp, tmp_path / "par", show_progress=False, workers=2)
    pd.testing.assert_frame_equal(parallel.metrics, results.metrics)
    # Timings differ from run to run; everything else in the table must not.
    pd.testing.assert_frame_equal(parallel.hparams.drop(columns="train_s"),
                                  results.hparams.drop(columns="train_s"))
    assert (tmp_path / "par" / "table3.md").read_text() == (run / "table3.md").read_text()
