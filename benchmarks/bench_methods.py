"""Cost of one minibatch update of every registered method, relative to Unified.

Batch 32 of 2048-d features (the MammoCLIP dimension), 8 sites, 4 classes, one torch
thread. Baseline, measured in the same run: Unified's update. Multiplying by the
number of updates the paper protocol takes gives the wall time of a full Table 3.

    python benchmarks/bench_methods.py [--dim 2048] [--steps 300]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from common import emit

from sim.parallel import one_thread
from strategies import load_all
from strategies.base import REGISTRY, Batch, TaskSpec


def time_updates(name: str, dim: int, steps: int, batch: int = 32) -> float:
    """Seconds per ``update`` of method ``name`` (after a short warm-up)."""
    cls = REGISTRY[name]
    torch.manual_seed(0)
    model = cls(TaskSpec(dim, 4, 8, (1.0,) * 4), cls.config_cls())
    model.configure_optimizer(1e-3)
    model.begin_epoch(0.5)
    rng = np.random.default_rng(0)
    batches = [Batch(torch.from_numpy(rng.normal(size=(batch, dim)).astype(np.float32)),
                     torch.from_numpy(rng.integers(0, 4, batch)), torch.from_numpy(rng.integers(0, 8, batch)),
                     torch.from_numpy(rng.integers(0, 8, batch))) for _ in range(16)]
    for b in batches[:5]:
        model.update(b)
    start = time.perf_counter()
    for i in range(steps):
        model.update(batches[i % len(batches)])
    return (time.perf_counter() - start) / steps


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    one_thread()  # as the pooled and federated runners set up their processes
    load_all()
    # Repeats interleave the methods, so load changes hit every method alike.
    runs = [{name: 1e3 * time_updates(name, args.dim, args.steps) for name in sorted(REGISTRY)}
            for _ in range(args.repeats)]
    ms = {name: statistics.median(r[name] for r in runs) for name in sorted(REGISTRY)}
    ratio = {name: statistics.median(r[name] / r["unified"] for r in runs) for name in sorted(REGISTRY)}
    out = {"bench": "methods", "dim": args.dim, "batch": 32, "repeats": args.repeats,
           "ms_per_update": {k: round(v, 3) for k, v in ms.items()},
           "ratio_vs_unified": {k: round(v, 2) for k, v in ratio.items()}}
    out["markdown"] = markdown(out)
    return emit(out, args.json)


def markdown(r: dict) -> str:
    """The BENCHMARKS.md section."""
    lines = ["## One minibatch update per method (`bench_methods.py`)", "",
             f"Batch {r['batch']} of {r['dim']}-d features, 8 sites, 4 classes, one thread, the "
             f"per-config path (`Method.update`). Baseline, in the same run: Unified's update. "
             f"Medians of {r['repeats']} interleaved repeats.", "",
             "| method | ms / update | ratio to Unified |", "|---|---|---|"]
    order = sorted(r["ms_per_update"], key=lambda k: r["ratio_vs_unified"][k])
    lines += [f"| {k} | {r['ms_per_update'][k]:.2f} | {r['ratio_vs_unified'][k]:.1f} |" for k in order]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main(sys.argv[1:])
