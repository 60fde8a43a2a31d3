"""The hospital image path: read, Mammo-CLIP breast crop, resize, and a resumable parallel PNG cache.

The crop follows the Mammo-CLIP preprocessing script step by step (see
:func:`mammo_clip_crop`); the cache turns a list of ``(scan_id, image_path)`` pairs into
8-bit PNGs of 1520 x 912 pixels, one failure never stopping the others.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import re
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from pathlib import Path
from typing import TypeAlias

import cv2
import numpy as np
import pandas as pd

from client.atomic import atomic_write
from client.dicom import ImageError, SkipImage, read_image
from client.progress import progress_bar

__all__ = ["CACHE_COLUMNS", "TARGET_SIZE", "CacheResult", "ImageError", "SkipImage", "cache_file_name",
           "cache_images", "mammo_clip_crop", "preprocess", "read_image", "resize_to_target"]

#: Pixels trimmed from every border before anything else (scanner edge artefacts).
TRIM = 5
#: Gray levels (after min-max to uint8) at or below which a pixel counts as background.
BACKGROUND = 40
#: Output (height, width) of :func:`resize_to_target`, Mammo-CLIP's 1520 x 912.
TARGET_SIZE: tuple[int, int] = (1520, 912)
#: Columns of the frame :func:`cache_images` returns.
CACHE_COLUMNS: tuple[str, ...] = ("scan_id", "image_path", "cache_file", "status", "reason")
#: One row per input item, columns :data:`CACHE_COLUMNS`, in input order.
CacheResult: TypeAlias = pd.DataFrame

_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,119}")
_CRASHED = "worker process died (crash or out of memory)"
Record: TypeAlias = Callable[[int, tuple[str, str | None]], None]


def to_uint8(image: np.ndarray, source: str = "<array>") -> np.ndarray:
    """Min-max ``image`` to 0..255 and truncate to uint8, as the reference script does.

    Raises
    ------
    ImageError
        "empty crop" when the image is constant (nothing to find).
    """
    low, high = float(image.min()), float(image.max())
    if not high > low:
        raise ImageError(source, "empty crop: the image is constant")
    # the script's float64 operations in its order, in place: one 8-byte copy instead of four
    data = np.array(image, dtype=np.float64)
    data -= low
    data /= high - low
    data *= 255
    return data.astype(np.uint8)


def _longest_run(mask: np.ndarray) -> tuple[int, int] | None:
    """``(start, stop)`` of the first longest run of True in a 1-D mask, None when all False."""
    padded = np.concatenate(([False], mask, [False])).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    if edges.size == 0:
        return None
    starts, stops = edges[::2], edges[1::2]
    best = int(np.argmax(stops - starts))
    return int(starts[best]), int(stops[best])


def _central_band(n: int) -> slice:
    """The reference's central 80 %: ``n//2 - int(0.4 n)`` to ``n//2 + int(0.4 n)``."""
    return slice(n // 2 - int(n * 0.4), n // 2 + int(n * 0.4))


def _varying_run(work: np.ndarray, axis: int, source: str) -> tuple[int, int]:
    """Longest run of lines along ``axis`` that are non-constant over the central band."""
    band = work[_central_band(work.shape[0])] if axis == 0 else work[:, _central_band(work.shape[1])]
    if band.size == 0:
        raise ImageError(source, "empty crop: the image is too small")
    # std != 0 exactly when max != min; the comparison avoids a float copy of the image
    run = _longest_run(band.max(axis=axis) != band.min(axis=axis))
    if run is None:
        which = "column" if axis == 0 else "row"
        raise ImageError(source, f"empty crop: no {which} varies over the central 80 %")
    return run


def mammo_clip_crop(image: np.ndarray, *,
                    source: str = "<array>") -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Crop the breast as the Mammo-CLIP preprocessing script does.

    Steps: trim 5 px from every border; min-max to uint8 (truncating); on a copy, set
    pixels <= 40 to 0; keep the longest run of columns whose std over the central 80 % of
    rows is non-zero; within those columns, keep the longest run of rows whose std over
    the central 80 % of columns is non-zero; cut that box out of the min-maxed image.
    Where several runs tie for longest, the first is kept (the script would keep the
    union of the tied runs, which is not a box).

    Parameters
    ----------
    image : numpy.ndarray
        2-D image, bright = dense (as :func:`read_image` returns it).
    source : str
        Names the image in error messages.

    Returns
    -------
    crop : numpy.ndarray
        uint8, ``box[3] - box[1]`` rows by ``box[2] - box[0]`` columns.
    box : tuple of int
        ``(left, top, right, bottom)``, half-open, in the coordinates of the *untrimmed*
        input: the crop shows ``image[top:bottom, left:right]``.

    Raises
    ------
    ImageError
        "empty crop ..." when the image is not 2-D, too small, constant, or all background.
    """
    if image.ndim != 2:
        raise ImageError(source, f"empty crop: expected a 2-D image, got shape {image.shape}")
    if min(image.shape) <= 2 * TRIM:
        raise ImageError(source, f"empty crop: image {image.shape} is too small to trim {TRIM} px")
    img8 = to_uint8(image[TRIM:-TRIM, TRIM:-TRIM], source)
    work = np.where(img8 <= BACKGROUND, np.uint8(0), img8)
    c0, c1 = _varying_run(work, 0, source)
    r0, r1 = _varying_run(work[:, c0:c1], 1, source)
    return img8[r0:r1, c0:c1], (c0 + TRIM, r0 + TRIM, c1 + TRIM, r1 + TRIM)


def resize_to_target(crop: np.ndarray) -> np.ndarray:
    """Resize a uint8 crop to 1520 x 912 (rows x columns) with area interpolation."""
    if crop.ndim != 2 or crop.dtype != np.uint8 or crop.size == 0:
        raise ValueError(f"expected a non-empty 2-D uint8 crop, got {crop.dtype} {crop.shape}")
    height, width = TARGET_SIZE
    return cv2.resize(crop, (width, height), interpolation=cv2.INTER_AREA)


def preprocess(path: str | Path) -> np.ndarray:
    """Read, crop and resize one image: uint8 array of shape (1520, 912).

    Raises
    ------
    SkipImage, ImageError
        See :func:`read_image` and :func:`mammo_clip_crop`; the message names ``path``.
    """
    crop, _ = mammo_clip_crop(read_image(path), source=str(path))
    return resize_to_target(crop)


def cache_file_name(scan_id: str) -> str:
    """The PNG file name of ``scan_id``: ``<scan_id>.png`` when that is a safe name.

    Other ids (slashes, spaces, non-ASCII, a leading dot, over 120 characters) become a
    sanitised stem plus the first 16 hex digits of the id's SHA-256, so the mapping is
    deterministic and distinct ids get distinct names.
    """
    if _SAFE_NAME.fullmatch(scan_id):
        return f"{scan_id}.png"
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", scan_id).strip("._-")[:80] or "scan"
    return f"{stem}-{hashlib.sha256(scan_id.encode('utf-8')).hexdigest()[:16]}.png"


def _cache_one(image_path: str, out_file: str) -> tuple[str, str | None]:
    """Preprocess one image into ``out_file``; ``(status, reason)``. Top level: spawn-safe."""
    try:
        image = preprocess(image_path)
    except SkipImage as exc:
        return "skipped", exc.reason
    except ImageError as exc:
        return "quarantined", exc.reason
    except Exception as exc:  # noqa: BLE001  (a bug or a codec crash on one image must not stop the rest)
        return "quarantined", f"{type(exc).__name__}: {str(exc)[:160]}"
    ok, png = cv2.imencode(".png", image)
    if not ok:
        return "quarantined", "PNG encoding failed"
    atomic_write(out_file, lambda tmp: tmp.write_bytes(png.tobytes()))
    return "ok", None


def _init_worker() -> None:
    cv2.setNumThreads(1)  # parallelism comes from the processes


def cache_images(items: Sequence[tuple[str, str]], out_dir: Path, workers: int | None = None,
                 progress: bool = True) -> CacheResult:
    """Preprocess every image into ``out_dir/<safe scan_id>.png`` (8-bit gray, 1520 x 912).

    Images whose PNG already exists are not redone (resume). Each PNG is written to a
    temporary file and renamed, so an interrupted run leaves no partial PNG.

    Parameters
    ----------
    items : sequence of (str, str)
        ``(scan_id, image_path)`` pairs; scan ids must be unique.
    out_dir : Path
        Cache folder (created if missing).
    workers : int, optional
        Processes (spawned); default ``os.cpu_count()``; 1 runs in this process.
    progress : bool
        Show a progress bar.

    Returns
    -------
    CacheResult
        DataFrame with :data:`CACHE_COLUMNS`, one row per item in input order: ``cache_file``
        is the PNG's name relative to ``out_dir`` (None unless ok/cached); ``status`` is
        "ok", "cached", "skipped" (e.g. FOR PROCESSING) or "quarantined"; ``reason`` says why.

    Raises
    ------
    ValueError
        On a repeated scan id or ``workers < 1``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pairs = [(str(scan_id), str(path)) for scan_id, path in items]
    names = _unique_names(pairs)
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    results: dict[int, tuple[str, str | None]] = {}
    jobs = {}
    for i, name in enumerate(names):
        if (out_dir / name).is_file():
            results[i] = ("cached", None)
        else:
            jobs[i] = (pairs[i][1], str(out_dir / name))
    with _progress_bar(progress, len(pairs), len(results)) as advance:
        def record(i: int, result: tuple[str, str | None]) -> None:
            results[i] = result
            advance()

        if workers == 1 or len(jobs) <= 1:
            for i, job in jobs.items():
                record(i, _cache_one(*job))
        else:
            _run_parallel(jobs, workers, record)
    rows = [(sid, path, names[i] if results[i][0] in ("ok", "cached") else None, *results[i])
            for i, (sid, path) in enumerate(pairs)]
    return pd.DataFrame(rows, columns=list(CACHE_COLUMNS), dtype=object)  # object keeps None as None


def _unique_names(pairs: list[tuple[str, str]]) -> list[str]:
    seen: dict[str, str] = {}
    names = []
    for scan_id, path in pairs:
        if scan_id in seen:
            raise ValueError(f"scan id {scan_id!r} appears twice ({seen[scan_id]} and {path}); "
                             "scan ids must be unique")
        seen[scan_id] = path
        names.append(cache_file_name(scan_id))
    return names


def _run_parallel(jobs: dict[int, tuple[str, str]], workers: int, record: Record,
                  work: Callable[[str, str], tuple[str, str | None]] = _cache_one) -> None:
    """Run ``jobs`` on spawned processes; an image that kills its worker is quarantined alone.

    A dead worker breaks the whole pool, so the images then in flight are suspects: the
    rest continue on a fresh pool, and each suspect is rerun on its own pool afterwards.
    """
    queue, suspects = list(jobs), []
    while queue:
        queue, crashed = _pool_pass({i: jobs[i] for i in queue}, workers, record, work)
        suspects += crashed
    for i in suspects:
        if _pool_pass({i: jobs[i]}, 1, record, work)[1]:
            record(i, ("quarantined", _CRASHED))


def _pool_pass(jobs: dict[int, tuple[str, str]], workers: int, record: Record,
               work: Callable[[str, str], tuple[str, str | None]]) -> tuple[list[int], list[int]]:
    """Run ``jobs`` until done or the pool breaks; ``(never submitted, in flight at the break)``."""
    todo = deque(jobs)
    in_flight: dict[Future, int] = {}
    pool = ProcessPoolExecutor(max_workers=min(workers, len(jobs)), initializer=_init_worker,
                               mp_context=multiprocessing.get_context("spawn"))
    try:
        while todo or in_flight:
            # a short queue (2 per worker) bounds how many images one crash makes suspect
            while todo and len(in_flight) < 2 * workers:
                in_flight[pool.submit(work, *jobs[todo[0]])] = todo[0]
                todo.popleft()  # only once submitted: a submit into a dead pool leaves it queued
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            broken = [f for f in done if isinstance(f.exception(), BrokenProcessPool)]
            for future in done:
                if future not in broken:
                    record(in_flight.pop(future), future.result())
            if broken:
                return list(todo), list(in_flight.values())
    except BrokenProcessPool:  # from submit: the pool died between two waits
        return list(todo), list(in_flight.values())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return [], []


@contextmanager
def _progress_bar(show: bool, total: int, done: int) -> Iterator[Callable[[], None]]:
    with progress_bar(show) as bar:
        task = bar.add_task("caching images", total=total, completed=done)
        yield lambda: bar.advance(task)
