"""How `bench_grid.py` turns measured step and kernel times into per-method protocol estimates and floors."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from functools import partial

from grid_model import (
    kernel_seconds,
    lean_step_seconds,
    linear_macs,
    lockstep_width,
    pair_flops,
    stacked_kernel_seconds,
    stacked_step_seconds,
    update_seconds,
)

from strategies import lockstep as ls
from strategies.base import REGISTRY, MethodConfig, get_method
from strategies.stacked import supports_stacked


def protocol_phases(config: MethodConfig, fold_sizes: list[int], n: int,
                    retrain_bs: int) -> list[tuple[int, int, int]]:
    """(batch size, runs, sequential steps) of each phase of the protocol for one model.

    The search runs ``len(batch_sizes) × len(lrs) × folds`` probes of ``search_epochs``;
    the per-config path runs them one after another, lockstep runs each batch size's
    runs together (the steps of its largest fold). The retrain is one run.
    """
    phases = []
    if config.searchable:
        for bs in config.batch_sizes:
            steps = config.search_epochs * max(math.ceil(s / bs) for s in fold_sizes)
            phases.append((bs, len(config.lrs) * len(fold_sizes), steps))
        bs = retrain_bs
    else:
        bs = config.batch_size
    phases.append((bs, 1, config.epochs * math.ceil(n / bs)))
    return phases


def samples_seen(config: MethodConfig, fold_sizes: list[int], n: int) -> int:
    """Training samples processed by the whole protocol (all runs)."""
    search = sum(fold_sizes) * len(config.lrs) * len(config.batch_sizes) * config.search_epochs
    return (search if config.searchable else 0) + n * config.epochs


def measured_once(cache: dict, key: tuple, measure: Callable[[], float], repeats: int = 3) -> float:
    """The median of ``repeats`` calls of ``measure``, taken once per ``key`` and kept in ``cache``."""
    if key not in cache:
        cache[key] = statistics.median(measure() for _ in range(repeats))
    return cache[key]


def measure_interleaved(name: str, dim: int, c: int, config: MethodConfig, phases: list[tuple[int, int, int]],
                        upd: dict, kern: dict, gflops: float, repeats: int = 3) -> None:
    """Fill both caches for a per-config or stacked method, its step and kernel times alternating.

    Each phase's step time (as `stacked_estimate` or the per-config estimate reads it from
    ``upd``) and kernel floor (as `kernel_floor` reads it from ``kern``) are measured in
    turn, ``repeats`` times each, and their medians kept: a slow spell of a shared
    machine then lands on both sides of the method's ratio to its bound.
    """
    *search, _ = phases
    for i, (bs, _, _) in enumerate(phases):
        key, step = step_measure(name, dim, c, config, bs, retrain=i == len(search))
        floor = (name, dim, bs)
        if key in upd and floor in kern:
            continue
        pairs = [(step(), kernel_seconds(name, dim, c, bs, gflops=gflops)) for _ in range(repeats)]
        upd.setdefault(key, statistics.median(a for a, _ in pairs))
        kern.setdefault(floor, statistics.median(b for _, b in pairs))


def step_measure(name: str, dim: int, c: int, config: MethodConfig, bs: int, retrain: bool
                 ) -> tuple[tuple, Callable[[], float]]:
    """The cache key and measurement of one step of a per-config or stacked method at ``bs``.

    A stacked method's search step is its learning rates' stacked step; its retrain step
    (``retrain``) is one stacked run's. A per-config method's is one `update`.
    """
    if not supports_stacked(REGISTRY[name], config):
        return (name, dim, bs), partial(update_seconds, name, dim, c, bs)
    if retrain:
        return ("stacked-1", name, dim, bs), partial(stacked_step_seconds, name, dim, c, bs, runs=1)
    return ("stacked", name, dim, bs), partial(stacked_step_seconds, name, dim, c, bs)


def stacked_estimate(name: str, dim: int, c: int, config: MethodConfig, phases: list[tuple[int, int, int]],
                     upd: dict) -> float:
    """Protocol seconds of a method whose search trains each fold's learning rates stacked.

    Search phases: (runs / learning rates) stacked runs × their steps × one stacked step
    (`grid_model.stacked_step_seconds`); the retrain (the last phase) is one stacked run.
    """
    *search, (bs_r, _, steps_r) = phases
    total = 0.0
    for bs, runs, steps in search:
        step = measured_once(upd, *step_measure(name, dim, c, config, bs, False))
        total += runs / len(config.lrs) * steps * step
    return total + steps_r * measured_once(upd, *step_measure(name, dim, c, config, bs_r, True))


def stacked_floor(dim: int, width: int, bs: int, runs: int, folds: int) -> float:
    """Seconds per lockstep step of ``runs`` stacked runs' kernels: the cheaper arrangement.

    The runs' GEMMs and Adam updates issued stacked (``folds`` × ``runs / folds``, as
    `strategies.lockstep` stacks them) or one run after another, whichever is less.
    """
    lrs = max(runs // folds, 1)
    stacked = stacked_kernel_seconds(dim, width, bs, folds if runs > 1 else 1, lrs)
    return min(stacked, runs * stacked_kernel_seconds(dim, width, bs, 1, 1))


def kernel_floor(name: str, dim: int, c: int, width: int, folds: int, phases: list[tuple[int, int, int]],
                 kern: dict, gflops: float) -> float:
    """Seconds of a method's unavoidable kernels over the whole protocol (cached in ``kern``).

    ``gflops`` is the GEMM rate at which `kernel_seconds` counts the products on all N²
    pairs of a batch (`pair_flops`).
    """
    lockstep = ls.supports_lockstep(REGISTRY[name])
    total = 0.0
    for bs, runs, steps in phases:
        if lockstep:
            step = measured_once(kern, (name, dim, bs, runs),
                                 lambda bs=bs, runs=runs: stacked_floor(dim, width, bs, runs, folds))
            total += steps * step
        else:
            step = measured_once(kern, (name, dim, bs),
                                 lambda bs=bs: kernel_seconds(name, dim, c, bs, gflops=gflops))
            total += runs * steps * step
    return total


def step_floor(config: object, fold_sizes: list[int], n: int, bs_retrain: int, dim: int, c: int,
               lean: dict) -> tuple[int, float]:
    """Sequential steps of the lockstep protocol and their floor in seconds."""
    phases = protocol_phases(config, fold_sizes, n, bs_retrain)
    floor = sum(s * measured_once(lean, (dim, c, bs), lambda bs=bs: lean_step_seconds(dim, c, bs))
                for bs, _, s in phases)
    return sum(s for _, _, s in phases), floor


def method_rows(methods: list[str], data: object, c: int, dim: int, gflops: float, lean: dict,
                measured: dict[str, float], folds: list[int], upd: dict,
                kern: dict | None = None) -> list[dict]:
    """Per method: protocol time (measured for lockstep methods, else steps × update time) vs bound.

    With ``kern`` (a cache), the bound also takes the kernel floor: every run's steps × the
    method's unavoidable kernels per step (`grid_model.kernel_seconds`); for a lockstep
    method, each phase's steps × the kernels of all its stacked runs (`stacked_floor`).
    """
    rows = []
    for name in methods:
        cls = get_method(name)
        config = cls.config_cls()
        width = lockstep_width(name, dim, c) if ls.supports_lockstep(cls) else c
        steps, floor_s = step_floor(config, folds, len(data), 16, dim, width, lean)
        phases = protocol_phases(config, folds, len(data), 16)
        flops = 6 * linear_macs(name, dim, c) * samples_seen(config, folds, len(data))
        flops += sum(r * s * pair_flops(name, dim, c, bs) for bs, r, s in phases)
        flop_s = flops / (gflops * 1e9)
        if kern is not None and not ls.supports_lockstep(cls):
            measure_interleaved(name, dim, c, config, phases, upd, kern, gflops)
        if ls.supports_lockstep(cls):
            est, path = measured.get(name, 0.0), "lockstep (measured)"
        elif supports_stacked(cls, config):
            est, path = stacked_estimate(name, dim, c, config, phases, upd), "stacked (estimated)"
        else:
            est = sum(r * s * measured_once(upd, *step_measure(name, dim, c, config, bs, False))
                      for bs, r, s in phases)
            path = "per-config (estimated)"
        kernel_s = 0.0
        if kern is not None:
            kernel_s = kernel_floor(name, dim, c, width, len(folds), phases, kern, gflops)
        rows.append({"method": name, "steps": steps, "seconds": est, "flop_s": flop_s, "floor_s": floor_s,
                     "kernel_s": kernel_s, "ratio_to_bound": est / max(flop_s, floor_s, kernel_s),
                     "path": path})
    return rows
