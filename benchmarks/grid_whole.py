"""The whole paper.toml grid from `bench_grid.py`'s per-method figures: one process, workers, bound."""

from __future__ import annotations

import statistics

import numpy as np
from fedgrid_model import makespan, parallel_slowdown
from grid_estimates import method_rows, step_floor
from grid_model import DIMS, warm_stacked_seconds

from sim.parallel import resolve_workers
from strategies.base import get_method

#: (training rows, per-site training rows, classes) of one task.
TaskSize = tuple[int, list[int], int]


def grid_estimate(paper: dict, tasks: dict[str, TaskSize], k: dict[str, float], lean: dict, upd: dict,
                  gflops: float, kern: dict) -> dict:
    """Estimated minutes of the whole paper.toml grid (5 FMs × 2 tasks × all rows), and at its bound.

    Lockstep rows: their step floor × the ratio to the floor measured here (``k``);
    other methods: their stacked and per-config steps × step times measured at each FM's
    width. Each task has its own training rows, sites and classes (``tasks``).
    ``bound_min``: every row at its bound (max of FLOP time, step floor and kernel floor
    at that FM's width) — the least time this machine allows. ``pairs``: each FM × task's
    (FM width, its models' seconds), pairs and models in the grid's order.
    """
    total = {"lockstep": 0.0, "stacked": 0.0, "per-config": 0.0, "bound": 0.0}
    pairs: list[tuple[int, list[float]]] = []
    config = get_method("unified").config_cls()
    for fm in paper["study"]["fms"]:
        dim = DIMS[fm]
        for task in paper["study"]["tasks"]:
            n, site_sizes, c = tasks[task]
            rows = method_rows(paper["study"]["methods"], np.zeros(n), c, dim, gflops, lean, {},
                               [2 * n // 3] * 3, upd, kern)
            sizes = site_sizes if paper["study"].get("individual") else []
            pair = []
            for size in sizes:
                floor = step_floor(config, [2 * size // 3] * 3, size, 16, dim, c, lean)[1]
                total["lockstep"] += floor * k["unified"]
                total["bound"] += floor
                pair.append(floor * k["unified"])
            for r in rows:
                path = r["path"].split(" ")[0]
                seconds = r["floor_s"] * k[r["method"]] if path == "lockstep" else r["seconds"]
                total[path] += seconds
                total["bound"] += max(r["flop_s"], r["floor_s"], r["kernel_s"])
                pair.append(seconds)
            pairs.append((dim, pair))
    bound = total.pop("bound")
    return {k_: v / 60 for k_, v in total.items()} | {"total_min": sum(total.values()) / 60,
                                                      "bound_min": bound / 60, "pairs": pairs}


def on_workers(grid: dict, c: int, repeats: int = 3) -> dict:
    """The grid's minutes on one worker process per core (`fedmammo pooled --jobs 0`).

    Models are handed out as `sim.parallel` hands them out (FM × task pairs in the grid's
    order, each pair's largest model first; it ranks them by samples seen × parameters,
    here by their estimated seconds) to whichever worker frees first, plus each worker's
    start-up. Each model runs slower beside another by the factor measured here at its
    FM's width: one stacked FairDisCO search loop (batch 16, the largest share of the
    grid) per core at once, on warm workers, the median of ``repeats`` such comparisons.
    At 2048 wide those steps are bound by memory traffic, which the two cores share.
    ``grid_order_min``: the same with every model handed out in the grid's plain order.
    """
    workers = resolve_workers(0)
    factors = {}
    for dim in sorted({dim for dim, _ in grid["pairs"]}, reverse=True):
        runs = [parallel_slowdown(warm_stacked_seconds, ("fairdisco", dim, c, 16), workers)
                for _ in range(repeats)]
        factors[dim] = (statistics.median(f for f, _ in runs), statistics.median(s for _, s in runs))
    slowdown = {dim: f for dim, (f, _) in factors.items()}
    startup = statistics.mean(s for _, s in factors.values())
    pairs = grid["pairs"]
    return {"workers": workers, "slowdown": slowdown, "worker_startup_s": startup,
            "parallel_min": worker_wall(pairs, slowdown, startup, workers) / 60,
            "grid_order_min": worker_wall(pairs, slowdown, startup, workers, largest_first=False) / 60}


def worker_wall(pairs: list[tuple[int, list[float]]], slowdown: dict[int, float], startup: float,
                workers: int, largest_first: bool = True) -> float:
    """Seconds of ``pairs`` (FM width, its models' seconds) on ``workers`` processes.

    Each model slowed by its width's factor, each pair's largest first (as `sim.parallel`
    hands them out) unless ``largest_first`` is off, plus a worker's start-up.
    """
    times = [t * slowdown[dim] for dim, p in pairs for t in (sorted(p, reverse=True) if largest_first else p)]
    return startup + makespan(times, workers)
