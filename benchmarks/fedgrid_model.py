"""Timing helpers of `bench_fedgrid.py`, in a module of their own so that its worker
processes (spawned: they import what they run by name) can load them."""

from __future__ import annotations

import statistics
import time
from dataclasses import replace

from client.app import _local
from server.app import FederatedSettings
from sim.federated import run_inprocess


def run_seconds(s: FederatedSettings) -> float:
    """Seconds of `run_inprocess` on ``s`` (module level: worker processes run it too)."""
    _local.cache_clear()  # every run pays its own data loading, as a fresh process would
    t0 = time.perf_counter()
    run_inprocess(s)
    return time.perf_counter() - t0


def warm_seconds(s: FederatedSettings, repeats: int = 3) -> tuple[float, float]:
    """(first run, median of ``repeats`` later runs) of ``s`` in this process, in seconds.

    A fresh worker's first run also imports torch's optimizer and compiler stacks (paid
    once per worker, not per run): comparing a cold worker's run with a warm process's
    would count that start-up as contention between the workers.
    """
    first = run_seconds(replace(s, out=f"{s.out}-cold"))
    later = [run_seconds(replace(s, out=f"{s.out}-{i}")) for i in range(repeats)]
    return first, statistics.median(later)


def makespan(times: list[float], workers: int) -> float:
    """Wall time of independent jobs on a process pool, in submission order.

    Each job goes to the first worker to free up, as `concurrent.futures` pools hand
    them out (`sim.simulate` submits the grid in its fm × task × method order).
    """
    loads = [0.0] * workers
    for t in times:
        loads[loads.index(min(loads))] += t
    return max(loads)
