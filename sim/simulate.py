"""``fedmammo simulate``: every FM × task × method of an experiment as a federation."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from client.atomic import write_parquet, write_text
from client.feature_store import list_entries
from server.app import FederatedSettings
from server.history import ALL_SITES, final_round
from server.tables import LEGEND, table3_cells, table3_markdown
from sim.experiment import Experiment
from sim.federated import ENGINES
from sim.parallel import map_ordered, one_thread, resolve_workers
from sim.runner import ensure_store, progress_bar
from strategies.base import get_method

log = logging.getLogger("fedmammo")


def settings_for(exp: Experiment, store: Path, out: Path, fm: str, task: str, method: str,
                 resume: bool = False) -> FederatedSettings:
    """The `FederatedSettings` of one (FM, task, method) of ``exp``."""
    f = exp.federated
    overrides = {k: v for k, v in asdict(exp.method_config(method)).items()
                 if k not in ("batch_sizes", "lrs")}
    return FederatedSettings(
        store=str(store), fm=fm, task=task, method=method,
        sites=tuple(list_entries(store).get(fm, [])), out=str(out / "runs" / f"{fm}-{task}-{method}"),
        num_rounds=f.rounds, local_epochs=f.local_epochs, local_steps=f.local_steps,
        batch_size=f.batch_size, lr=f.lr,
        seed=exp.protocol.seed, fraction_train=f.fraction_train, fault_rate=f.fault_rate,
        resume=resume, method_overrides=overrides, checkpoint_every_s=f.checkpoint_every_s)


def run_federated_experiment(exp: Experiment, out: str | Path, engine: str | None = None,
                             resume: bool = False, show_progress: bool = True,
                             workers: int = 1) -> pd.DataFrame:
    """Run the experiment's federations; write ``metrics.parquet`` and ``table3.md``.

    Parameters
    ----------
    exp : Experiment
        Its ``[federated]`` table sets rounds, local epochs and the engine.
    out : str or Path
        Results folder (each run's checkpoints go under ``out/runs``).
    engine : str, optional
        ``inprocess`` or ``ray``; defaults to the config's.
    resume : bool
        Continue runs from their checkpoints.
    show_progress : bool
        Show a progress bar.
    workers : int
        In-process runs on that many worker processes (`sim.parallel`; 0 = one per core),
        with the same results; the Ray engine spreads each run's clients itself.

    Returns
    -------
    pandas.DataFrame
        The concatenated per-round history (``mode = "federated"``).
    """
    out = Path(out)
    one_thread()
    store = ensure_store(exp, out, show_progress)
    engine = engine or exp.federated.engine
    run, workers = ENGINES[engine], resolve_workers(workers) if engine == "inprocess" else 1
    jobs = [settings_for(exp, store, out, fm, t, m, resume)
            for fm in exp.study.fms for t in exp.study.tasks for m in exp.federated_methods]
    with progress_bar(show_progress) as progress:
        bar = progress.add_task("federated runs", total=len(jobs))
        if workers > 1:
            frames = map_ordered(run, jobs, workers, lambda _s: progress.advance(bar))
        else:
            frames = []
            for s in jobs:
                progress.update(bar, description=f"{s.fm} · {s.task} · {s.method}")
                frames.append(run(s))
                progress.advance(bar)
    history = pd.concat(frames, ignore_index=True)
    labels = {m: get_method(m).label for m in exp.federated_methods}
    last = final_round(history)
    tables = {t: table3_markdown(table3_cells(last, t, exp.study.fms, labels), t, exp.study.fms)
              for t in exp.study.tasks}
    write_parquet(out / "metrics.parquet", history)
    header = (f"# Table 3 (federated, final round) — experiment {exp.name!r}\n\n{LEGEND}\n")
    write_text(out / "table3.md", header + "\n".join(tables.values()))
    return history


def missing_sites(history: pd.DataFrame) -> pd.DataFrame:
    """Which sites missed which round: one row per (fm, task, method, round, site, stage)."""
    sel = history[history["metric"].isin(["train_missing", "eval_missing"]) & (history["site"] != ALL_SITES)]
    return sel.assign(stage=sel["metric"].str.replace("_missing", ""))[
        ["fm", "task", "method", "round", "site", "stage"]].reset_index(drop=True)
