"""Timing helpers of `bench_fedgrid.py`, in a module of their own so that its worker
processes (spawned: they import what they run by name) can load them."""

from __future__ import annotations

import time

from client.app import _local
from server.app import FederatedSettings
from sim.federated import run_inprocess


def run_seconds(s: FederatedSettings) -> float:
    """Seconds of `run_inprocess` on ``s`` (module level: worker processes run it too)."""
    _local.cache_clear()  # every run pays its own data loading, as a fresh process would
    t0 = time.perf_counter()
    run_inprocess(s)
    return time.perf_counter() - t0


def makespan(times: list[float], workers: int) -> float:
    """Wall time of independent jobs dealt longest first to the least-loaded worker."""
    loads = [0.0] * workers
    for t in sorted(times, reverse=True):
        loads[loads.index(min(loads))] += t
    return max(loads)
