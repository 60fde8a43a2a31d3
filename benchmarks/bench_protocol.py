"""Wall time of the paper's full HP protocol for Unified on one FM × task at scale 1.

Baseline, measured in the same run: one retrain with fixed hyperparameters (50 epochs,
batch 32) on the same data. The ratio says how many "plain fits" the protocol costs.

    python benchmarks/bench_protocol.py [--fm mammoclip] [--task density] [--scale 1.0]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import emit

from client.feature_store import read_entry
from client.local import site_task
from sim.experiment import Experiment, ProtocolConfig, StudyConfig
from sim.parallel import one_thread
from sim.runner import write_synthetic_store
from sim.sites import load_sites
from strategies.core import ArrayData, concat
from strategies.protocol import fit


def main(argv: list[str] | None = None) -> dict:
    """Time the protocol against one plain fit; returns (and optionally writes) the result."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--fm", default="mammoclip")
    parser.add_argument("--task", default="density")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    one_thread()  # as the pooled and federated runners set up their processes
    data, n_domains = pooled_data(args.fm, args.task, args.scale)
    exp = Experiment(name="bench", study=StudyConfig(fms=(args.fm,), tasks=(args.task,)),
                     protocol=ProtocolConfig())
    config = exp.method_config("unified")
    n_classes = 4 if args.task == "density" else 3
    base, full, result = [], [], None
    # The first optimiser of a process imports torch's compiler stack: keep it out of the timings.
    fit("unified", data.take(np.arange(64)), n_classes, n_domains, config, do_search=False)
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        fit("unified", data, n_classes, n_domains, config, do_search=False)
        base.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        result = fit("unified", data, n_classes, n_domains, config, do_search=True)
        full.append(time.perf_counter() - t0)
    out = {"bench": "protocol", "fm": args.fm, "task": args.task, "scale": args.scale,
           "n_train": len(data), "repeats": args.repeats,
           "baseline_single_fit_s": round(statistics.median(base), 2),
           "full_protocol_s": round(statistics.median(full), 2),
           "ratio": round(statistics.median(f / b for f, b in zip(full, base, strict=True)), 1),
           "chosen": {"batch_size": result.hparams.batch_size, "lr": result.hparams.lr},
           "torch_threads": torch.get_num_threads()}
    out["markdown"] = markdown(out)
    return emit(out, args.json)


def pooled_data(fm: str, task: str, scale: float) -> tuple[ArrayData, int]:
    """The synthetic sites' pooled training rows of ``fm`` × ``task``, and how many sites have the task."""
    sites = load_sites()
    with tempfile.TemporaryDirectory() as tmp:
        write_synthetic_store(tmp, sites, [fm], scale, 0, show_progress=False)
        entries = [read_entry(tmp, fm, s.name) for s in sites]
    tasks = [t for i, e in enumerate(entries) if (t := site_task(e, task, i)) is not None]
    return concat([t.train for t in tasks]), len(tasks)


def markdown(out: dict) -> str:
    """BENCHMARKS.md's section for the result ``out`` of `main`."""
    return (
        f"## Paper protocol, Unified, one FM × task (`bench_protocol.py`)\n\n{out['fm']} profile, "
        f"{out['task']}, scale {out['scale']:g}, {out['n_train']:,} training scans; the paper's search "
        "plus the 50-epoch retrain, on the default (lockstep) path. Baseline, in the same run: one "
        f"50-epoch fit at fixed hyperparameters (batch 32). Medians of {out['repeats']}.\n\n"
        "| what | seconds | ratio |\n|---|---|---|\n"
        f"| baseline: one 50-epoch fit (batch 32) | {out['baseline_single_fit_s']:.1f} | 1.0 |\n"
        f"| full protocol (27 CV runs + retrain) | {out['full_protocol_s']:.1f} | {out['ratio']:.1f} |\n\n"
        f"The search chose batch {out['chosen']['batch_size']}, lr {out['chosen']['lr']:g}.\n")


if __name__ == "__main__":
    main(sys.argv[1:])
