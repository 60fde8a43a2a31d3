"""The paper's pooled grid: lockstep search + retrain against a DataLoader baseline.

One FM × task at Table-2 scale (synthetic store). Baseline, measured in the same run:
`baseline_grid.protocol` — one DataLoader loop per (batch size, lr, fold), then the
retrain. Also measured in the same run: the step floor (sequential optimizer steps ×
one lean fused update), the fp32 GEMM rate (for FLOP bounds) and every paper.toml
method's update time, from which the whole grid's wall time is estimated.

    python benchmarks/bench_grid.py [--fm mammoclip] [--task density] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tomllib
import torch
from baseline_grid import protocol, train_probe
from common import emit
from fedgrid_model import makespan, parallel_slowdown
from grid_estimates import (
    kernel_floor,
    measure_interleaved,
    measured_once,
    protocol_phases,
    samples_seen,
    stacked_estimate,
    step_measure,
)
from grid_model import (
    DIMS,
    gemm_gflops,
    lean_step_seconds,
    linear_macs,
    lockstep_width,
    pair_flops,
    warm_update_seconds,
)
from grid_report import grid_markdown
from sklearn.metrics import f1_score

from client.feature_store import read_entry
from client.local import site_task
from client.schema import task_classes
from sim.parallel import one_thread, resolve_workers
from sim.runner import write_synthetic_store
from sim.sites import load_sites
from strategies import lockstep as ls
from strategies.base import get_method
from strategies.core import ArrayData, concat, predict
from strategies.protocol import cv_folds, fit
from strategies.stacked import supports_stacked

PAPER = Path(__file__).resolve().parent.parent / "configs" / "experiments" / "paper.toml"


def load(store: str, fm: str, task: str) -> tuple:
    """Training rows, test rows, domains and per-site training sizes of one FM × task."""
    entries = [read_entry(store, fm, s.name) for s in load_sites()]
    labelled = [e for e in entries if site_task(e, task, 0) is not None]
    tasks = [site_task(e, task, d) for d, e in enumerate(labelled)]  # domains 0..n-1, as sim.pooled
    test_x = np.concatenate([t.test_x for t in tasks])
    test_y = np.concatenate([t.test_y for t in tasks])
    return concat([t.train for t in tasks]), test_x, test_y, len(tasks), [len(t.train) for t in tasks]


def timed(fn: object, repeats: int) -> tuple[float, object]:
    """Median seconds of ``repeats`` calls of ``fn`` and its last result."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def paired(ours: Callable[[], object], base: Callable[[], object], repeats: int, base_repeats: int
           ) -> tuple[tuple[float, object], tuple[float, object], float]:
    """Both sides' median seconds and last results, and the median of per-pair speed-ups.

    The sides alternate (each baseline run beside one of ours), so a slow spell of a
    shared machine lands on both sides of a ratio instead of on one side's median.
    """
    rows = []
    for i in range(max(repeats, base_repeats)):
        a = timed(ours, 1) if i < repeats else None
        b = timed(base, 1) if i < base_repeats else None
        rows.append((a, b))
    mine = [a for a, _ in rows if a]
    theirs = [b for _, b in rows if b]
    ratio = statistics.median(b[0] / a[0] for a, b in rows if a and b)
    return ((statistics.median(t for t, _ in mine), mine[-1][1]),
            (statistics.median(t for t, _ in theirs), theirs[-1][1]), ratio)


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


def equal_work(data: object, c: int, epochs: int, base_choice: tuple, our_choice: tuple, base_s: float
               ) -> float:
    """The baseline's seconds had it retrained at the lockstep's choice (equal work).

    Near-tied candidates can fall either way between the two paths (float rounding moves
    a validation prediction or two), and a batch-8 retrain has twice a batch-16 one's
    steps; where the choices differ, both baseline retrains are timed here and swapped.
    """
    if tuple(base_choice) == tuple(our_choice):
        return base_s
    own = timed(lambda: train_probe(data.x, data.y, c, base_choice[0], base_choice[1], epochs, 0), 1)[0]
    same = timed(lambda: train_probe(data.x, data.y, c, our_choice[0], our_choice[1], epochs, 0), 1)[0]
    return base_s - own + same


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; returns the results with a ``markdown`` section."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--fm", default="mammoclip")
    parser.add_argument("--task", default="density")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline-repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    one_thread()  # as the pooled and federated runners set up their processes
    paper = tomllib.loads(PAPER.read_text())
    c = len(task_classes(args.task))
    with tempfile.TemporaryDirectory() as tmp:
        write_synthetic_store(tmp, load_sites(), [args.fm], args.scale, 0, show_progress=False)
        data, test_x, test_y, n_dom, site_sizes = load(tmp, args.fm, args.task)
    out = {"bench": "grid", "fm": args.fm, "task": args.task, "n_train": len(data),
           "gemm_gflops": gemm_gflops(), "repeats": args.repeats, "baseline_repeats": args.baseline_repeats}
    folds = out["fold_sizes"] = [len(tr) for tr, _ in cv_folds(data, 3, 0)]
    lean: dict = {}
    out |= unified_vs_baseline(data, (test_x, test_y), c, n_dom, out, lean)
    upd: dict = {}
    kern: dict = {}
    measured = {"unified": out["lockstep_s"]} | {
        m: timed(lambda m=m: fit(m, data, c, n_dom, get_method(m).config_cls()), args.repeats)[0]
        for m in paper["study"]["methods"] if m != "unified" and ls.supports_lockstep(get_method(m))}
    out["methods"] = method_rows(paper["study"]["methods"], data, c, data.x.shape[1], out["gemm_gflops"],
                                 lean, measured, folds, upd, kern)
    k = {r["method"]: r["seconds"] / r["floor_s"] for r in out["methods"] if r["path"].startswith("lockstep")}
    out["grid"] = grid_estimate(paper, site_sizes, len(data), c, k, lean, upd, out["gemm_gflops"], kern)
    out["grid"] |= on_workers(out["grid"], c)
    out["markdown"] = grid_markdown(out)
    return emit(out, args.json)


def unified_vs_baseline(data: ArrayData, test: tuple[np.ndarray, np.ndarray], c: int, n_dom: int, run: dict,
                        lean: dict) -> dict:
    """Unified's protocol, lockstep against the DataLoader baseline: times, floors, choices, test F1.

    ``run`` supplies the repeats, the GEMM rate and the CV folds' sizes; ``lean`` caches the
    lean step times.
    """
    config = get_method("unified").config_cls()
    folds = run["fold_sizes"]
    # The first optimiser of a process imports torch's compiler stack: keep it out of the timings.
    fit("unified", data.take(np.arange(64)), c, n_dom, config, do_search=False)
    (ours_s, ours), (base_s, (best, _, base_model)), speedup = paired(
        lambda: fit("unified", data, c, n_dom, config),
        lambda: protocol(data, c, config.batch_sizes, config.lrs, config.search_epochs, config.epochs),
        run["repeats"], run["baseline_repeats"])
    with torch.inference_mode():
        base_pred = base_model(torch.from_numpy(test[0])).argmax(1).numpy()
    steps, floor_s = step_floor(config, folds, len(data), ours.hparams.batch_size, data.x.shape[1], c, lean)
    choice = (ours.hparams.batch_size, ours.hparams.lr)
    flop_s = 6 * (data.x.shape[1] * c) * samples_seen(config, folds, len(data)) / (run["gemm_gflops"] * 1e9)
    return {"baseline_s": base_s, "lockstep_s": ours_s, "speedup": speedup,
            "sequential_steps": steps, "step_floor_s": floor_s, "ratio_to_floor": ours_s / floor_s,
            "flop_s": flop_s, "baseline_choice": list(best), "lockstep_choice": list(choice),
            "baseline_f1": f1_score(test[1], base_pred, average="macro"),
            "lockstep_f1": f1_score(test[1], predict(ours.model, test[0]), average="macro"),
            "equal_work_baseline_s": equal_work(data, c, config.epochs, best, choice, base_s)}


def grid_estimate(paper: dict, site_sizes: list[int], n: int, c: int, k: dict[str, float], lean: dict,
                  upd: dict, gflops: float, kern: dict) -> dict:
    """Estimated minutes of the whole paper.toml grid (5 FMs × 2 tasks × all rows), and at its bound.

    Lockstep rows: their step floor × the ratio to the floor measured here (``k``);
    other methods: their stacked and per-config steps × step times measured at each FM's width.
    ``bound_min``: every row at its bound (max of FLOP time, step floor and, for per-config
    methods, kernel floor at that FM's width) — the least time this machine allows.
    Both tasks are assumed to have this task's row counts (they differ by a few %).
    ``pairs_s``: each FM × task's models' seconds, pairs and models in the grid's order.
    """
    total = {"lockstep": 0.0, "stacked": 0.0, "per-config": 0.0, "bound": 0.0}
    pairs: list[list[float]] = []
    config = get_method("unified").config_cls()
    for fm in paper["study"]["fms"]:
        dim = DIMS[fm]
        rows = method_rows(paper["study"]["methods"], np.zeros(n), c, dim, gflops, lean, {}, [2 * n // 3] * 3,
                           upd, kern)
        sizes = site_sizes if paper["study"].get("individual") else []
        floors = [step_floor(config, [2 * size // 3] * 3, size, 16, dim, c, lean)[1] for size in sizes]
        for _ in paper["study"]["tasks"]:
            pair = []
            for floor in floors:
                total["lockstep"] += floor * k["unified"]
                total["bound"] += floor
                pair.append(floor * k["unified"])
            for r in rows:
                path = r["path"].split(" ")[0]
                seconds = r["floor_s"] * k[r["method"]] if path == "lockstep" else r["seconds"]
                total[path] += seconds
                total["bound"] += max(r["flop_s"], r["floor_s"], r["kernel_s"])
                pair.append(seconds)
            pairs.append(pair)
    bound = total.pop("bound")
    return {k_: v / 60 for k_, v in total.items()} | {"total_min": sum(total.values()) / 60,
                                                      "bound_min": bound / 60, "pairs_s": pairs}


def on_workers(grid: dict, c: int) -> dict:
    """The grid's minutes on one worker process per core (`fedmammo pooled --jobs 0`).

    Models are handed out as `sim.parallel` hands them out (FM × task pairs in the grid's
    order, each pair's largest model first; it ranks them by samples seen × parameters,
    here by their estimated seconds) to whichever worker frees first, each slowed by the
    factor measured here with one FairDisCO update loop (the largest share of the grid)
    per core at once, on warm workers; plus each worker's start-up. ``grid_order_min``:
    the same with every model handed out in the grid's plain order.
    """
    workers = resolve_workers(0)
    slowdown, startup = parallel_slowdown(warm_update_seconds, ("fairdisco", 2048, c, 16), workers)

    def wall(order: Callable[[list[float]], list[float]]) -> float:
        return (startup + makespan([t * slowdown for p in grid["pairs_s"] for t in order(p)], workers)) / 60

    return {"workers": workers, "slowdown": slowdown, "worker_startup_s": startup,
            "parallel_min": wall(lambda p: sorted(p, reverse=True)), "grid_order_min": wall(list)}


if __name__ == "__main__":
    main(sys.argv[1:])
