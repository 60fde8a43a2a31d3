"""Orchestration shared by the command line: synthesize a store, run, write results."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from client.atomic import write_parquet, write_text
from client.feature_store import Provenance, list_entries, write_entry
from server.history import empty_history
from server.tables import LEGEND, table3_cells, table3_markdown
from sim.experiment import Experiment
from sim.parallel import one_thread, plan_units, read_fm, resolve_workers, run_parallel
from sim.pooled import count_jobs, run_task
from sim.sites import DEFAULT_SITES, Site, load_sites
from sim.synthetic import GENERATOR_VERSION, synthesize
from strategies.base import get_method

log = logging.getLogger("fedmammo")


@contextmanager
def progress_bar(enabled: bool = True) -> Iterator[Progress]:
    """A rich progress bar (a silent one when disabled)."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, disable=not enabled, transient=False) as progress:
        yield progress


def write_synthetic_store(
    out: str | Path, sites: Sequence[Site], fms: Sequence[str], scale: float, seed: int,
    show_progress: bool = True,
) -> Path:
    """Simulate every site × FM profile and write it as a feature store.

    Parameters
    ----------
    out : str or Path
        Store root.
    sites : sequence of Site
        The site table.
    fms : sequence of str
        FM profile names.
    scale, seed : float, int
        Simulator scale and seed.
    show_progress : bool
        Show a progress bar.

    Returns
    -------
    Path
        The store root.
    """
    with progress_bar(show_progress) as progress:
        bar = progress.add_task("synthesizing sites", total=len(sites) * len(fms))
        for site, profile, manifest, features in synthesize(tuple(sites), tuple(fms), scale, seed):
            prov = Provenance(fm=profile.name, site=site.name, dim=profile.dim,
                              n_scans=len(manifest), weights_sha256="synthetic",
                              generator=GENERATOR_VERSION, extra={"scale": scale, "seed": seed})
            write_entry(out, manifest, features, prov)
            progress.advance(bar)
    return Path(out)


@dataclass(frozen=True)
class PooledResults:
    """What a pooled experiment produced."""

    metrics: pd.DataFrame
    hparams: pd.DataFrame
    tables: dict[str, str]


def ensure_store(exp: Experiment, out: Path, show_progress: bool) -> Path:
    """The experiment's store, synthesizing it under ``out/store`` when none is named."""
    if exp.data.store:
        return Path(exp.data.store)
    store = out / "store"
    sites = load_sites(exp.data.sites or DEFAULT_SITES)
    have = list_entries(store)
    missing = [fm for fm in exp.study.fms if set(have.get(fm, [])) != {s.name for s in sites}]
    if missing:
        write_synthetic_store(store, sites, missing, exp.data.scale, exp.data.seed, show_progress)
    return store


def _run_serial(
    store: Path, exp: Experiment, progress: Progress,
) -> tuple[list[pd.DataFrame], list[pd.DataFrame]]:
    """Every FM × task in this process: history frames and hyperparameter tables."""
    frames, hps = [], []
    for fm in exp.study.fms:
        entries = read_fm(store, fm)
        for task in exp.study.tasks:
            bar = progress.add_task(f"{fm} · {task}", total=count_jobs(exp, entries, task))
            history, hp = run_task(exp, fm, task, entries, lambda n, b=bar: progress.advance(b, n))
            frames.append(history)
            hps.append(hp)
    return frames, hps


def run_pooled_experiment(
    exp: Experiment, out: str | Path, show_progress: bool = True, workers: int = 1,
) -> PooledResults:
    """Run a pooled experiment and write ``metrics.parquet``, ``hparams.parquet``, ``table3.md``.

    Nothing is written to ``out`` (beyond a synthesized store cache) unless the whole
    run succeeds, and each output file is replaced atomically. ``workers`` > 1 trains the
    models on that many processes (`sim.parallel`; 0 = every core), with the same results.
    """
    out = Path(out)
    one_thread()
    store = ensure_store(exp, out, show_progress)
    workers = resolve_workers(workers)
    with progress_bar(show_progress) as progress:
        if workers > 1:
            plan = list(plan_units(store, exp))
            bars = {(fm, t): progress.add_task(f"{fm} · {t}", total=len(costs)) for fm, t, costs in plan}
            frames, rows = run_parallel(store, exp, plan, workers,
                                        lambda fm, t: progress.advance(bars[fm, t]))
            hps = [pd.DataFrame(rows)]
        else:
            frames, hps = _run_serial(store, exp, progress)
    metrics = pd.concat([empty_history(), *frames], ignore_index=True)
    hparams = pd.concat(hps, ignore_index=True)
    labels = {m: get_method(m).label for m in exp.study.methods}
    tables = {t: table3_markdown(table3_cells(metrics, t, exp.study.fms, labels), t, exp.study.fms)
              for t in exp.study.tasks}
    write_parquet(out / "metrics.parquet", metrics)
    write_parquet(out / "hparams.parquet", hparams)
    header = f"# Table 3 — experiment {exp.name!r}\n\n{LEGEND}\n"
    write_text(out / "table3.md", header + "\n".join(tables.values()))
    return PooledResults(metrics, hparams, tables)
