"""Independent runs on several worker processes (``fedmammo pooled/simulate --jobs``).

Each model of the grid (`sim.pooled.jobs` of every FM × task) is independent, and one
model's training is a single-threaded chain of small steps (`strategies.core`): threads
inside one model buy little on a few cores, separate models scale with them. Workers are
spawned processes (fork would copy the parent's torch thread pools); each loads an
(FM, task)'s arrays once and keeps them for the models that follow. Results come back in
the serial order, so a run with N workers writes the same tables as a run with one.
In-process federations (`sim.simulate`) are independent in the same way, one per worker.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import TypeVar

import pandas as pd
import torch
from threadpoolctl import threadpool_limits

from client.feature_store import SiteFeatures, list_entries, read_entry
from client.local import SiteTask
from client.schema import task_classes
from sim.experiment import Experiment
from sim.pooled import job_cost, jobs, load_tasks, n_domains, train_job
from strategies.allocator import retain_freed_memory

Unit = tuple[str, str, int]  # (fm, task, index into the task's jobs)
T = TypeVar("T")
R = TypeVar("R")

_CACHE: dict[tuple[str, str], tuple[dict[str, SiteTask], int]] = {}


def resolve_workers(requested: int) -> int:
    """Worker count: ``requested``, or every available core when it is 0 or less."""
    if requested > 0:
        return requested
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def read_fm(store: Path, fm: str) -> dict[str, SiteFeatures]:
    """Every site's store entry for ``fm``, or one error naming the store and FM."""
    entries = {s: read_entry(store, fm, s) for s in list_entries(store).get(fm, [])}
    if not entries:
        raise FileNotFoundError(f"{store}: no feature-store entries for FM {fm!r}")
    return entries


def _tasks(store: Path, exp: Experiment, fm: str, task: str) -> tuple[dict[str, SiteTask], int]:
    """The (FM, task)'s site arrays, loaded once per worker (one pair kept at a time)."""
    if (fm, task) not in _CACHE:
        _CACHE.clear()  # workers move through the grid in order: the old pair is done
        entries = read_fm(store, fm)
        _CACHE[fm, task] = (load_tasks(exp, task, entries), n_domains(entries, task))
    return _CACHE[fm, task]


def one_thread() -> None:
    """One thread for torch's kernels and numpy's BLAS; an allocator that keeps freed memory.

    Probes are tiny: thread hand-offs cost more than they save, and worker processes
    already take one core each. numpy's BLAS (the lockstep and probe products) keeps
    its own pool, which would otherwise start a thread per core. The allocator:
    `strategies.allocator.retain_freed_memory`.
    """
    torch.set_num_threads(1)
    threadpool_limits(limits=1, user_api="blas")
    retain_freed_memory()


def _init_worker() -> None:
    one_thread()


def _run_unit(store: Path, exp: Experiment, unit: Unit) -> tuple[pd.DataFrame, dict[str, object]]:
    fm, task, i = unit
    tasks, domains = _tasks(store, exp, fm, task)
    return train_job(exp, fm, task, tasks, domains, jobs(exp, tasks)[i])


def plan_units(store: Path, exp: Experiment) -> Iterator[tuple[str, str, list[float]]]:
    """(fm, task, each model's `sim.pooled.job_cost`) of every FM × task, in the serial order."""
    for fm in exp.study.fms:
        entries = read_fm(store, fm)
        for task in exp.study.tasks:
            tasks, domains = load_tasks(exp, task, entries), n_domains(entries, task)
            classes = len(task_classes(task))
            yield fm, task, [job_cost(exp, job, tasks, classes, domains) for job in jobs(exp, tasks)]


def run_parallel(
    store: Path, exp: Experiment, plan: list[tuple[str, str, int]], workers: int,
    done: Callable[[str, str], None] = lambda _f, _t: None,
) -> tuple[list[pd.DataFrame], list[dict[str, object]]]:
    """Train every model of the pooled study on ``workers`` processes.

    Parameters
    ----------
    store : Path
        Feature store root.
    exp : Experiment
        The experiment.
    plan : list of tuple
        `plan_units` of the experiment. Each FM × task's models are handed out largest
        first, so that a grid ends on small models instead of one worker finishing a
        large one alone; each worker still moves through the FM × task pairs in order.
    workers : int
        Processes (at least 2 to be worth it).
    done : callable
        Called with (fm, task) after each finished model (progress display).

    Returns
    -------
    tuple of list
        History frames and hyperparameter rows, in the order a serial run produces them.
    """
    units = [(fm, task, i) for fm, task, costs in plan for i in range(len(costs))]
    cost = [c for _, _, costs in plan for c in costs]
    pair = [p for p, (_, _, costs) in enumerate(plan) for _ in costs]
    order = sorted(range(len(units)), key=lambda u: (pair[u], -cost[u]))
    results = map_ordered(partial(_run_unit, store, exp), units, workers, lambda u: done(u[0], u[1]), order)
    return [r[0] for r in results], [r[1] for r in results]


def map_ordered(fn: Callable[[T], R], items: Sequence[T], workers: int,
                done: Callable[[T], None] = lambda _i: None, order: Sequence[int] | None = None) -> list[R]:
    """``[fn(i) for i in items]`` on ``workers`` spawned processes, results in ``items`` order.

    ``fn`` and the items must pickle (module-level functions, dataclasses); ``done`` is
    called with each item as it finishes. ``order`` (indices into ``items``) is the order
    they are handed out in; ``items``' own when None. The first failure is raised, after
    the pool has stopped.
    """
    order = range(len(items)) if order is None else order
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_worker) as pool:
        futures: dict[int, Future] = {i: pool.submit(fn, items[i]) for i in order}
        for i, future in futures.items():
            future.add_done_callback(lambda _f, item=items[i]: done(item))
        return [futures[i].result() for i in range(len(items))]
