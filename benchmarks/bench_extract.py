"""CPU feature-extraction speed per FM: fp32 vs bf16 autocast vs channels-last.

Full-size architectures at each FM's input size (MammoCLIP 1520×912, the others 224),
random weights drawn with ``randomize_`` (fan-in scaled noise, so activations are
realistic: default-initialised CNNs give near-zero activations that run abnormally slowly
on the CPU). Baseline, measured in the same run: the same model in fp32, contiguous
memory format. One warm-up pass per mode, then the median of ``--repeats`` timed passes;
a time budget per FM and for the whole script keeps it under five minutes on 2 cores
(a mode left without time is reported as skipped).

    python benchmarks/bench_extract.py [--repeats 3] [--threads 2] [--budget 200]

On a machine shared with other busy processes use ``--threads 1``: oversubscribed OpenMP
threads wait on each other and made 2-thread timings 4-5× slower and erratic here.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from common import emit

from client.extractors.base import load_extractor, randomize_

FMS = ("medclip", "gloria", "clip", "dinov2", "mammoclip")
MODES = {"fp32": (False, False), "bf16": (True, False), "channels_last": (False, True),
         "channels_last+bf16": (True, True)}


def time_mode(extractor, batch: torch.Tensor, bf16: bool, channels_last: bool, repeats: int,
              deadline: float) -> float | None:
    """Median seconds per image of ``repeats`` passes after one warm-up; None if out of time."""
    if time.perf_counter() > deadline:
        return None
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = extractor.model.to(memory_format=fmt)
    x = batch.contiguous(memory_format=torch.channels_last) if channels_last else batch.contiguous()
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            model(x)
        if i:  # the first pass builds kernels and caches
            times.append((time.perf_counter() - start) / len(x))
        if time.perf_counter() > deadline:
            break
    return statistics.median(times) if times else None


def bench_fm(fm: str, repeats: int, deadline: float) -> dict:
    """Seconds per image of every mode for one FM."""
    extractor = load_extractor(fm, None)
    randomize_(extractor.model)
    n = 1 if fm == "mammoclip" else 4
    batch = torch.randn(n, 3, *extractor.input_size, generator=torch.Generator().manual_seed(0))
    row = {"fm": fm, "input": "×".join(map(str, extractor.input_size)), "batch": n}
    for mode, (bf16, cl) in MODES.items():
        row[mode] = time_mode(extractor, batch, bf16, cl, repeats, deadline)
    return row


def markdown(rows: list[dict], threads: int, repeats: int) -> str:
    """The BENCHMARKS.md section: speed-ups over fp32 (same run), fp32 seconds for scale."""
    lines = ["## Feature extraction on the CPU (bench_extract.py)", "",
             f"Full-size FM encoders with random (fan-in scaled) weights, torch threads: {threads}; speed-up "
             f"= fp32 s/image ÷ mode s/image, medians of {repeats} passes after a warm-up "
             "(MammoCLIP batch 1 at 1520×912, the others batch 4 at 224×224).", "",
             "| FM | input | fp32 s/image | bf16 | channels_last | channels_last + bf16 |",
             "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        base = r["fp32"]
        cells = [f"{base / r[m]:.2f}×" if base and r[m] else "skipped"
                 for m in ("bf16", "channels_last", "channels_last+bf16")]
        lines.append(f"| {r['fm']} | {r['input']} | {f'{base:.3f}' if base else 'skipped'} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--budget", type=float, default=200.0, help="seconds for the whole script")
    parser.add_argument("--fm", nargs="+", default=list(FMS), choices=FMS)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    rows = []
    for i, fm in enumerate(args.fm):
        share = (args.budget - (time.perf_counter() - start)) / (len(args.fm) - i)
        rows.append(bench_fm(fm, args.repeats, time.perf_counter() + share))
    result = {"benchmark": "extract", "threads": args.threads, "rows": rows,
              "seconds": time.perf_counter() - start, "markdown": markdown(rows, args.threads, args.repeats)}
    return emit(result, args.json)


if __name__ == "__main__":
    main(sys.argv[1:])
