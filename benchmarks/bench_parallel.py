"""The pooled study on one process against ``--jobs`` worker processes.

A reduced paper grid (two FMs, one task, Individual and every paper.toml method, the
full 3 × 3 × 3 search at fewer epochs) on a synthetic store, run with one process
(baseline) and with one worker per core (`sim.parallel`), in the same run. Both runs
must write identical metrics. The speed-up is what the whole paper grid gains with
``fedmammo pooled --jobs 0`` (`bench_grid.py` estimates it serially).

    python benchmarks/bench_parallel.py [--scale 0.25] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import tomllib
from common import emit

from sim.experiment import load_experiment
from sim.parallel import resolve_workers
from sim.runner import run_pooled_experiment, write_synthetic_store
from sim.sites import load_sites

PAPER = Path(__file__).resolve().parent.parent / "configs" / "experiments" / "paper.toml"


def experiment_toml(store: Path, scale: float) -> str:
    """The reduced grid as an experiment file over ``store``."""
    methods = tomllib.loads(PAPER.read_text())["study"]["methods"]
    return (f'name = "parallel-bench"\n[data]\nscale = {scale}\nstore = "{store}"\n'
            f'[study]\nfms = ["mammoclip", "medclip"]\ntasks = ["density"]\nindividual = true\n'
            f"methods = {methods!r}\n".replace("'", '"')
            + "[protocol]\nsearch = true\nsearch_epochs = 2\nepochs = 4\n")


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; returns the results with a ``markdown`` section."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=float, default=0.25)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    workers = resolve_workers(0)
    times: dict[int, list[float]] = {1: [], workers: []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_synthetic_store(root / "store", load_sites(), ["mammoclip", "medclip"], args.scale, 0, False)
        (root / "exp.toml").write_text(experiment_toml(root / "store", args.scale))
        exp = load_experiment(root / "exp.toml")
        metrics = {}
        for _ in range(args.repeats):
            for n in times:
                t0 = time.perf_counter()
                metrics[n] = run_pooled_experiment(exp, root / f"out{n}", False, workers=n).metrics
                times[n].append(time.perf_counter() - t0)
    same = bool(pd.DataFrame.equals(metrics[1], metrics[workers]))
    serial, par = (statistics.median(times[n]) for n in times)
    out = {"bench": "parallel", "workers": workers, "cores": os.cpu_count(), "serial_s": serial,
           "parallel_s": par, "speedup": serial / par, "identical": same, "repeats": args.repeats,
           "scale": args.scale}
    out["markdown"] = "\n".join([
        "## Pooled study on worker processes (`bench_parallel.py`)", "",
        f"Two FMs (mammoclip, medclip) × density at scale {args.scale}: Individual and every paper.toml "
        "method, the full 3 × 3 × 3 search over 2 epochs and a 4-epoch retrain. Baseline, in the same "
        f"run: one process (`--jobs 1`); against `--jobs 0` = {workers} spawned workers, one per core "
        f"(start-up included). Median of {args.repeats}.", "",
        "| what | seconds | ratio |", "|---|---|---|",
        f"| one process (baseline) | {serial:.1f} | 1.0 |",
        f"| {workers} worker processes | {par:.1f} | {serial / par:.2f}× faster |", "",
        f"Metrics identical to the serial run's: {'yes' if same else 'NO'}.", ""])
    return emit(out, args.json)


if __name__ == "__main__":
    main(sys.argv[1:])
