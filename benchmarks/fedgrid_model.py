"""Timing helpers of `bench_fedgrid.py` and `bench_grid.py`, in a module of their own so
that their worker processes (spawned: they import what they run by name) can load them."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TypeVar

from client.app import _local
from server.app import FederatedSettings
from sim.federated import run_inprocess
from sim.parallel import map_ordered

T = TypeVar("T")


def run_seconds(s: FederatedSettings) -> float:
    """Seconds of `run_inprocess` on ``s`` (module level: worker processes run it too)."""
    _local.cache_clear()  # every run pays its own data loading, as a fresh process would
    t0 = time.perf_counter()
    run_inprocess(s)
    return time.perf_counter() - t0


def warm_seconds(s: FederatedSettings, repeats: int = 3) -> tuple[float, float]:
    """(extra seconds of the first run, median of ``repeats`` later runs) of ``s`` in this process.

    A fresh worker's first run also imports torch's optimizer and compiler stacks (paid
    once per worker, not per run): comparing a cold worker's run with a warm process's
    would count that start-up as contention between the workers.
    """
    out = f"{s.out}-{os.getpid()}"  # workers given the same settings write apart
    first = run_seconds(replace(s, out=f"{out}-cold"))
    steady = statistics.median(run_seconds(replace(s, out=f"{out}-{i}")) for i in range(repeats))
    return first - steady, steady


def _timed(job: tuple[Callable[[T], tuple[float, float]], T]) -> tuple[tuple[float, float], float]:
    fn, item = job
    t0 = time.perf_counter()
    return fn(item), time.perf_counter() - t0


def parallel_slowdown(fn: Callable[[T], tuple[float, float]], item: T, workers: int) -> tuple[float, float]:
    """How much slower a warm worker runs ``fn(item)`` beside ``workers - 1`` others, and its start-up.

    ``fn`` returns (extra seconds of its first call, steady seconds) in its process
    (`warm_seconds`). Returns the mean steady time of ``workers`` spawned workers at once
    over one worker's alone, and a worker's start-up: spawning and imports (the pool's
    wall time beyond its slowest call) plus the first call's extra.
    """
    alone = map_ordered(_timed, [(fn, item)], 1)[0][0]
    t0 = time.perf_counter()
    together = map_ordered(_timed, [(fn, item)] * workers, workers)
    wall = time.perf_counter() - t0
    return (statistics.mean(r[1] for r, _ in together) / alone[1],
            wall - max(sec for _, sec in together) + statistics.mean(r[0] for r, _ in together))


def makespan(times: list[float], workers: int) -> float:
    """Wall time of independent jobs on a process pool, in submission order.

    Each job goes to the first worker to free up, as `concurrent.futures` pools hand
    them out (`sim.simulate` submits the grid in its fm × task × method order).
    """
    loads = [0.0] * workers
    for t in times:
        loads[loads.index(min(loads))] += t
    return max(loads)
