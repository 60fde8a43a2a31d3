"""Per-round overhead of the federated engine (in-process and Ray) over client compute.

Baseline, measured in the same run: the same local updates run back to back in one
loop (what the clients compute), plus the same number of pooled epochs of Unified.
Overhead per round = (federated wall time − client compute) / rounds. Ray runs in a
loopback-only network namespace when possible (root + unshare), as the tests do.

    python benchmarks/bench_federated.py [--rounds 10] [--no-ray]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import torch
from common import emit

import client.app as client_app
from client.app import _label_loss
from client.evaluation import site_counts
from client.feature_store import read_entry
from client.local import SiteTask, site_task
from server.app import FederatedSettings, history_parts
from sim.federated import run_inprocess
from sim.parallel import one_thread
from sim.runner import write_synthetic_store
from sim.sites import load_sites
from strategies.base import TaskSpec, get_method
from strategies.core import HParams, class_weights, concat, fit_steps, predict
from strategies.protocol import fit

STEPS = 25


def site_parts(store: str, sites: list[str]) -> list[SiteTask]:
    """Every site's density rows, as each client holds them in memory."""
    entries = [read_entry(store, "mammoclip", s) for s in sites]
    return [t for d, e in enumerate(entries) if (t := site_task(e, "density", d))]


def compute_only(parts: list[SiteTask], rounds: int) -> float:
    """Seconds of every site's own work for ``rounds`` rounds, in one loop.

    Per site and round: the local updates, the label loss of the received and of the
    updated model on its training rows (its reported train metrics) and the prediction
    and confusion counts of its test rows (its evaluation reply). The rows are in memory
    already, as a client's are after its first round.
    """
    data = concat([p.train for p in parts])
    cls = get_method("unified")
    model = cls(TaskSpec(data.x.shape[1], 4, len(parts), class_weights(data.y, 4)), cls.config_cls())
    start = time.perf_counter()
    for _ in range(rounds):
        for p in parts:
            _label_loss(model, p)
            model.configure_optimizer(1e-3)
            fit_steps(model, p.train, HParams(32, 1e-3, 1), STEPS, seed=0)
            _label_loss(model, p)
            site_counts(p.name, p.test_y, predict(model, p.test_x), 4, p.test_groups)
    return time.perf_counter() - start


def pooled_epochs(store: str, sites: list[str], epochs: int) -> float:
    """Seconds of pooled Unified training for ``epochs`` epochs on the same rows (batch 32)."""
    entries = [read_entry(store, "mammoclip", s) for s in sites]
    data = concat([t.train for d, e in enumerate(entries) if (t := site_task(e, "density", d))])
    start = time.perf_counter()
    fit("unified", data, 4, 8, get_method("unified").config_cls(epochs=epochs), do_search=False)
    return time.perf_counter() - start


def ray_seconds(store: str, out: str, rounds: int) -> float | None:
    """Wall time of a Ray run (subprocess, isolated when possible); None if unavailable."""
    code = ("import sys,time; from server.app import FederatedSettings; from sim.federated import run_ray;"
            "from sim.sites import load_sites; t=time.perf_counter();"
            f"run_ray(FederatedSettings(store={store!r}, fm='mammoclip', task='density', method='unified',"
            f"sites=tuple(s.name for s in load_sites()), out={out!r}, num_rounds={rounds},"
            f"local_steps={STEPS}, checkpoint_every_s=0)); "
            "print('SECONDS', time.perf_counter()-t)")
    cmd = [sys.executable, "-c", code]
    if os.geteuid() == 0 and shutil.which("unshare"):
        cmd = ["unshare", "-n", "sh", "-c", "ip link set lo up && exec \"$0\" \"$@\"", *cmd]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, start_new_session=True)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("SECONDS")]
    return float(lines[-1].split()[1]) if lines else None


def round_gap(out: Path) -> float:
    """Median seconds between consecutive rounds' checkpoint-history writes of a run in ``out``."""
    stamps = sorted(p.stat().st_mtime for p in history_parts(out))
    return statistics.median(b - a for a, b in zip(stamps, stamps[1:], strict=False))


def timed(fn: object, repeats: int) -> float:
    """Median seconds of ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


#: The clients' own work as `client.app` calls it; timed inside a run by `client_work`.
CLIENT_WORK = ("fit_steps", "fit_epochs", "_label_loss", "predict", "site_counts")


@contextmanager
def client_work() -> Iterator[list[float]]:
    """Accumulate the seconds spent in the clients' own work (`CLIENT_WORK`) while active."""
    total = [0.0]
    saved = {name: getattr(client_app, name) for name in CLIENT_WORK}

    def timer(fn: Callable) -> Callable:
        def run(*args: object, **kwargs: object) -> object:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                total[0] += time.perf_counter() - t0
        return run

    for name, fn in saved.items():
        setattr(client_app, name, timer(fn))
    try:
        yield total
    finally:
        for name, fn in saved.items():
            setattr(client_app, name, fn)


def paired(
    compute: Callable[[], float], long_run: Callable, short_run: Callable, repeats: int,
) -> dict[str, float]:
    """Client compute, the marginal federation and two overheads, medians over ``repeats``.

    The three runs alternate within each repeat, so a slow spell of a shared machine
    lands on both sides of a difference instead of on one median. ``overhead`` is the
    marginal federation minus the separate compute loop; ``overhead_in_run`` subtracts
    the clients' work timed inside the same two runs, immune to the machine's speed
    drifting between runs.
    """
    rows = []
    for _ in range(repeats):
        c = compute()  # times its own loop, not the setup
        with client_work() as work_long:
            lo = timed(long_run, 1)
        with client_work() as work_short:
            sh = timed(short_run, 1)
        rows.append({"compute": c, "federation": lo - sh, "overhead": lo - sh - c,
                     "overhead_in_run": (lo - sh) - (work_long[0] - work_short[0])})
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


def ray_figures(store: str, tmp: Path, rounds: int, compute_per_round: float) -> dict[str, float]:
    """A 2-round and a (2 + ``rounds``)-round Ray run: start-up, marginal round, overhead."""
    short = ray_seconds(store, f"{tmp}/r1", 2)
    long_ = ray_seconds(store, f"{tmp}/r2", 2 + rounds)
    if not (short and long_):
        return {}
    # Ray's start-up varies by seconds between runs, more than a few rounds take:
    # the median gap between the rounds' checkpoint writes is the marginal round.
    per_round = round_gap(tmp / "r2")
    return {"ray_2_rounds_s": round(short, 2), "ray_long_rounds_s": round(long_, 2),
            "ray_per_round_s": round(per_round, 3),
            "ray_overhead_per_round_s": round(per_round - compute_per_round, 3)}


def inprocess_overheads(s: FederatedSettings, parts: list[SiteTask], rounds: int, repeats: int,
                        change: dict[str, object]) -> dict[str, float]:
    """`paired` figures of in-process runs of ``s`` (with ``change``) against the compute loop.

    Marginal rounds, as for Ray: a (2 + ``rounds``)-round run minus a 2-round run.
    """
    short_s = FederatedSettings(**(asdict(s) | change | {"out": f"{s.out}-short", "num_rounds": 2}))
    long_s = FederatedSettings(**(asdict(s) | change | {"num_rounds": 2 + rounds}))
    return paired(lambda: compute_only(parts, rounds), lambda: run_inprocess(long_s),
                  lambda: run_inprocess(short_s), repeats)


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; returns the results with a ``markdown`` section."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    one_thread()  # as the pooled and federated runners set up their processes
    # The first optimiser of a process imports torch's compiler stack: keep it out of the timings.
    torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])
    sites = [s.name for s in load_sites()]
    with tempfile.TemporaryDirectory() as tmp:
        store = f"{tmp}/store"
        write_synthetic_store(store, load_sites(), ["mammoclip"], 0.25, 0, show_progress=False)
        s = FederatedSettings(store=store, fm="mammoclip", task="density", method="unified",
                              sites=tuple(sites), out=f"{tmp}/fed", num_rounds=args.rounds, local_steps=STEPS)
        parts = site_parts(store, sites)
        med = inprocess_overheads(s, parts, args.rounds, args.repeats, {})
        med_every = inprocess_overheads(s, parts, args.rounds, args.repeats, {"checkpoint_every_s": 0.0})
        compute, inproc = med["compute"], med["federation"]
        quick = FederatedSettings(**(asdict(s) | {"out": f"{tmp}/quick", "num_rounds": 40}))
        quick_s = timed(lambda: run_inprocess(quick), args.repeats)
        pooled_s = timed(lambda: pooled_epochs(store, sites, 30), args.repeats)
        per_round = {f"{prefix}_{k}_per_round_s": round(m[k] / args.rounds, 4)
                     for prefix, m in (("inprocess", med), ("every_round", med_every))
                     for k in ("overhead", "overhead_in_run")}
        out = {"bench": "federated", "rounds": args.rounds, "local_steps": STEPS, "sites": len(sites),
               "repeats": args.repeats, "client_compute_s": round(compute, 3),
               "inprocess_s": round(inproc, 3), **per_round,
               "quick_federated_40_rounds_s": round(quick_s, 2), "pooled_30_epochs_s": round(pooled_s, 2),
               "quick_federated_vs_pooled_ratio": round(quick_s / pooled_s, 2)}
        if not args.no_ray:
            out |= ray_figures(store, Path(tmp), args.rounds, compute / args.rounds)
    out["markdown"] = markdown(out)
    return emit(out, args.json)


def markdown(r: dict) -> str:
    """The BENCHMARKS.md section."""
    c = r["client_compute_s"] / r["rounds"]
    lines = ["## Federated engine overhead (`bench_federated.py`)", "",
             f"MammoCLIP profile at quarter scale, density, {r['sites']} nodes, Unified/FedAvg, "
             f"{r['local_steps']} local updates per site per round, one thread. Baseline, in the same run: "
             "the clients' own work back to back in one loop (local updates, the train-loss of the "
             "received and the updated model, prediction and confusion counts of the test rows). "
             f"Per-round figures are marginal: a 2 + {r['rounds']}-round run minus a 2-round run "
             "(start-up cancels); in-process runs checkpoint as by default (at most once a second, and "
             "after the last round, in place), and once more after every round. "
             f"The three runs alternate in each of {r['repeats']} repeats; figures "
             "are medians, the overhead the median of the per-repeat differences. Ray (isolated in a "
             "loopback-only network "
             f"namespace): the median gap between consecutive rounds' checkpoint writes (one per round) of a "
             f"2 + {r['rounds']}-round run. Replies are collected by `server.prompt_grid.PromptGrid` "
             "(Flower's simulation grid polls every 0.1 s; its engine still picks up each batch of "
             "messages on a 0.1 s scan).", "",
             "| what | seconds per round | ratio to client compute |", "|---|---|---|",
             f"| client compute (baseline) | {c:.3f} | 1.00 |",
             "| in-process federation (evaluation and history included) "
             f"| {r['inprocess_s'] / r['rounds']:.3f} "
             f"| {r['inprocess_s'] / r['client_compute_s']:.2f} |",
             f"| in-process overhead over client compute | {r['inprocess_overhead_per_round_s']:.4f} | |",
             "| in-process overhead over the clients' work timed in the same run "
             f"| {r['inprocess_overhead_in_run_per_round_s']:.4f} | |",
             "| the same two, with a checkpoint after every round (`checkpoint_every_s = 0`) "
             f"| {r['every_round_overhead_per_round_s']:.4f}, "
             f"{r['every_round_overhead_in_run_per_round_s']:.4f} | |"]
    if "ray_per_round_s" in r:
        lines += [f"| Ray, marginal round | {r['ray_per_round_s']:.3f} | {r['ray_per_round_s'] / c:.2f} |",
                  f"| Ray overhead over serial client compute | {r['ray_overhead_per_round_s']:.3f} | |",
                  f"| Ray start-up + 2 rounds (once per run) | {r['ray_2_rounds_s']:.1f} | |"]
    lines += ["", "The quick federated run (40 rounds, in process) takes "
              f"{r['quick_federated_40_rounds_s']:.1f} s "
              f"against {r['pooled_30_epochs_s']:.1f} s for the same rows' 30 pooled epochs (ratio "
              f"{r['quick_federated_vs_pooled_ratio']:.1f}). Flower 1.42's Ray backend calls "
              "`ray.shutdown()` at the end of every run, so a grid pays Ray's start-up once per run; "
              "attached to a running cluster (`--ray-address`) that start-up shrinks to connecting."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main(sys.argv[1:])
