"""A real pooled run against what `bench_grid.py`'s model predicts for it from its step times.

The whole grid's minutes are an estimate: per-step times measured in isolation × the
protocol's steps, and on workers a makespan with a slowdown factor. Here the same model
predicts a small grid that is run for real, once in one process and once on one worker
per core: the two methods that take 90% of the grid (DANN and FairDisCO), on a 2048-
and a 512-wide FM, at the paper's full protocol (3 × 3 × 3 search over 20 epochs, the
50-epoch retrain at the batch size the search chose) on a tenth of Table 2's rows. The
run's own overheads (loading features, building models, validation and test
predictions, worker start-up) and cache effects are what the model leaves out.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pandas as pd
from grid_estimates import protocol_phases, stacked_estimate
from grid_model import DIMS
from grid_whole import worker_wall

from sim.experiment import load_experiment
from sim.parallel import resolve_workers
from sim.runner import run_pooled_experiment, write_synthetic_store
from sim.sites import load_sites
from strategies.base import get_method

#: The check's FMs (one 2048-wide, one 512-wide) and methods.
FMS, METHODS = ("mammoclip", "medclip"), ("dann", "fairdisco")


def experiment_toml(store: Path, scale: float, task: str) -> str:
    """The check's grid as an experiment file over ``store``, the paper's protocol otherwise."""
    return (f'name = "grid-check"\n[data]\nscale = {scale}\nstore = "{store}"\n'
            f'[study]\nfms = {list(FMS)!r}\ntasks = ["{task}"]\nindividual = false\n'
            f"methods = {list(METHODS)!r}\n[protocol]\nsearch = true\n").replace("'", '"')


def predicted(hparams: pd.DataFrame, c: int, upd: dict) -> list[tuple[int, list[float]]]:
    """Each FM's (width, models' predicted seconds) for the run that chose ``hparams``.

    ``hparams`` is the run's table (one row per model: its FM, method, chosen batch size and
    training rows); step times come from ``upd``, measured where `bench_grid` had not.
    """
    pairs = []
    for fm in FMS:
        rows = hparams[hparams["fm"] == fm]
        seconds = []
        for r in rows.itertuples():
            config = get_method(r.method).config_cls()
            phases = protocol_phases(config, [2 * r.n_train // 3] * 3, r.n_train, int(r.batch_size))
            seconds.append(stacked_estimate(r.method, DIMS[fm], c, config, phases, upd))
        pairs.append((DIMS[fm], seconds))
    return pairs


def grid_check(task: str, c: int, upd: dict, workers_model: dict, scale: float = 0.1) -> dict:
    """Run the check's grid on one process and on workers; both against the model's prediction.

    ``workers_model`` is `grid_whole.on_workers`'s result (slowdown by width, start-up).
    """
    workers = resolve_workers(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_synthetic_store(root / "store", load_sites(), list(FMS), scale, 0, False)
        (root / "exp.toml").write_text(experiment_toml(root / "store", scale, task))
        exp = load_experiment(root / "exp.toml")
        real, hparams = {}, {}
        for n in (1, workers):
            t0 = time.perf_counter()
            hparams[n] = run_pooled_experiment(exp, root / f"out{n}", False, workers=n).hparams
            real[n] = time.perf_counter() - t0
    pairs = predicted(hparams[1], c, upd)
    # Each model's own training seconds in the one-process run, in `predicted`'s order.
    measured = [t for fm in FMS for t in hparams[1].loc[hparams[1]["fm"] == fm, "train_s"]]
    ratios = [m / p for m, p in zip(measured, [s for _, p in pairs for s in p], strict=True)]
    serial = sum(sum(p) for _, p in pairs)
    parallel = worker_wall(pairs, workers_model["slowdown"], workers_model["worker_startup_s"], workers)
    return {"scale": scale, "task": task, "n_train": int(hparams[1]["n_train"].iloc[0]),
            "retrain_bs": {f"{r.fm}/{r.method}": int(r.batch_size) for r in hparams[1].itertuples()},
            "serial_s": real[1], "serial_predicted_s": serial, "model_ratios": (min(ratios), max(ratios)),
            "parallel_s": real[workers], "parallel_predicted_s": parallel}
