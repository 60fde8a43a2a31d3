"""Frozen-FM feature extraction of one prepared site folder into the feature store.

A prepared site folder (``fedmammo prepare``) holds ``manifest.parquet`` (the manifest
columns plus ``image_path`` and ``cache_file``, null for quarantined scans) and
``images/<cache_file>``, 8-bit grayscale PNGs of the Mammo-CLIP crop. Extraction runs in
chunks of one batch; each finished chunk is saved atomically under
``OUT/.partial/<fm>/<site>/``, so an interrupted run resumes where it stopped. Only when
every chunk is done is the store entry written (atomically, by
:func:`client.feature_store.write_entry`) and the partial folder removed: a reader never
sees a half-finished entry. Unreadable images are left out of the entry and counted.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from client.atomic import write_text
from client.extract_run import (
    chunk_path,
    decode_chunk,
    encode_chunk,
    load_chunk,
    resolve_device,
    save_chunk,
)
from client.feature_store import PROVENANCE, Provenance, entry_dir, write_entry
from client.progress import progress_bar
from client.schema import validate_manifest

PARTIAL = ".partial"
MANIFEST, IMAGES = "manifest.parquet", "images"
#: Called after each chunk is saved with (chunk index, number of chunks); tests interrupt here.
ChunkHook = Callable[[int, int], None]


class ExtractionError(ValueError):
    """The site folder or its manifest is not what ``fedmammo prepare`` writes."""


def load_site_manifest(manifest_path: str | Path) -> tuple[pd.DataFrame, str, int]:
    """Read a prepared site's manifest and keep the scans that have a cached image.

    Parameters
    ----------
    manifest_path : str or Path
        ``SITE_DIR/manifest.parquet``.

    Returns
    -------
    rows : pandas.DataFrame
        Rows with a ``cache_file``, index reset.
    site : str
        The one site the manifest describes.
    n_quarantined : int
        Rows without a cached image (quarantined by ``prepare``).
    """
    path = Path(manifest_path)
    if not path.is_file():
        raise ExtractionError(f"{path}: not found; expected a prepared site's {MANIFEST}")
    frame = pd.read_parquet(path)
    validate_manifest(frame, str(path))
    if "cache_file" not in frame.columns:
        raise ExtractionError(f"{path}: no 'cache_file' column; expected the manifest `prepare` writes")
    sites = sorted(frame["site"].dropna().astype(str).unique())
    if len(sites) != 1:
        raise ExtractionError(f"{path}: holds sites {sites}; expected exactly one site")
    kept = frame[frame["cache_file"].notna()].reset_index(drop=True)
    if kept.empty:
        raise ExtractionError(f"{path}: no row has a cached image (all {len(frame)} quarantined)")
    return kept, sites[0], len(frame) - len(kept)


def library_versions() -> dict[str, str]:
    """Versions of the libraries that define the encoders (for provenance)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("torch", "torchvision", "open_clip_torch", "transformers", "efficientnet_pytorch"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "absent"
    return out


def _plan(rows: pd.DataFrame, site: str, weights_sha: str, extractor, settings: dict) -> dict:
    """What the chunks depend on: a rerun reuses chunks only when all of it is unchanged."""
    scans = hashlib.sha256("\n".join(rows["scan_id"].astype(str) + "\t" + rows["cache_file"].astype(str))
                           .encode()).hexdigest()
    return {"fm": extractor.name, "site": site, "n": len(rows), "weights_sha256": weights_sha,
            "preprocessing": extractor.preprocessing, "dim": extractor.dim, "scans_sha256": scans} | settings


def _prepare_partial(partial: Path, plan: dict) -> None:
    """Keep finished chunks only if they were made under the same plan; else start over."""
    plan_file = partial / "plan.json"
    if plan_file.is_file() and json.loads(plan_file.read_text()) == plan:
        return
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    write_text(plan_file, json.dumps(plan, indent=2, sort_keys=True))


def _remove_partial(partial: Path) -> None:
    shutil.rmtree(partial, ignore_errors=True)
    for parent in (partial.parent, partial.parent.parent):
        if parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()


def extract_site(
    manifest: str | Path, fm: str, weights: str | Path | None, out: str | Path, *,
    batch_size: int = 8, device: str = "auto", bf16: bool = False, channels_last: bool = False,
    tiny: bool = False, arch: str | None = None, show_progress: bool = True,
    on_chunk: ChunkHook | None = None,
) -> Path:
    """Extract one prepared site's features with one FM into the store ``out`` (resumable).

    Parameters
    ----------
    manifest : str or Path
        ``SITE_DIR/manifest.parquet``; images are read from ``SITE_DIR/images/``.
    fm : str
        FM name (see :func:`client.extractors.base.load_extractor`); the store's ``fm``.
    weights : str or Path or None
        Checkpoint file/folder; ``None`` only for random-weight demos.
    out : str or Path
        Store root; the entry lands in ``out/<fm>/<site>/``.
    batch_size : int
        Images per forward pass (and per resumable chunk).
    device : {"auto", "cpu", "cuda"}
        ``auto`` picks CUDA when present.
    bf16, channels_last : bool
        bfloat16 autocast; channels-last memory format (faster CNNs).
    tiny : bool
        Test-size architecture (tests and demos only).
    arch : str, optional
        ``"hf"`` or ``"open_clip:<model>"`` for an FM that is not built in.
    show_progress : bool
        Rich progress bar with images/s.
    on_chunk : callable, optional
        Called as ``on_chunk(i, n_chunks)`` after chunk ``i`` is saved.

    Returns
    -------
    Path
        The written store entry folder.
    """
    from client.extractors.base import load_extractor, sha256_of

    if batch_size < 1:
        raise ExtractionError(f"batch size {batch_size}; expected >= 1")
    rows, site, n_quarantined = load_site_manifest(manifest)
    dev = resolve_device(device)
    extractor = load_extractor(fm, weights, tiny=tiny, arch=arch)
    settings = {"batch_size": batch_size, "device": dev.type, "dtype": "bfloat16-autocast" if bf16 else
                "float32", "channels_last": channels_last, "tiny": tiny, "arch": arch}
    weights_sha = sha256_of(weights)
    partial = Path(out) / PARTIAL / fm / site
    _prepare_partial(partial, _plan(rows, site, weights_sha, extractor, settings))
    paths = [Path(manifest).parent / IMAGES / str(f) for f in rows["cache_file"]]
    chunks = [paths[i:i + batch_size] for i in range(0, len(paths), batch_size)]
    _run_chunks(extractor, chunks, partial, dev, bf16, channels_last, show_progress, on_chunk,
                f"{fm} {site}")
    parts = [load_chunk(partial, i) for i in range(len(chunks))]
    features, ok = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    if not ok.any():
        raise ExtractionError(f"{manifest}: none of the {len(ok)} cached images could be read "
                              f"from {Path(manifest).parent / IMAGES}; expected 8-bit grayscale PNGs")
    extra = settings | {"preprocessing": extractor.preprocessing, "libraries": library_versions(),
                        "weights_path": str(weights), "n_quarantined": n_quarantined,
                        "n_failed_images": int((~ok).sum()),
                        "failed_scans": rows.loc[~ok, "scan_id"].astype(str).tolist()[:100]}
    prov = Provenance(fm=fm, site=site, dim=extractor.dim, n_scans=int(ok.sum()),
                      weights_sha256=weights_sha, generator="fedmammo.extract", extra=extra)
    target = write_entry(out, rows[ok].reset_index(drop=True), features[ok], prov)
    _remove_partial(partial)
    return target


def _run_chunks(extractor, chunks: list[list[Path]], partial: Path, dev: torch.device, bf16: bool,
                channels_last: bool, show_progress: bool, on_chunk: ChunkHook | None, label: str) -> None:
    """Encode every chunk not yet saved, decoding the next chunk while the current one runs."""
    todo = [i for i in range(len(chunks)) if not chunk_path(partial, i).is_file()]
    done = sum(map(len, chunks)) - sum(len(chunks[i]) for i in todo)
    model = extractor.model.to(dev, memory_format=torch.channels_last) if channels_last else \
        extractor.model.to(dev)
    model.eval()
    readers = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1))  # PIL and torch free the GIL
    with progress_bar(show_progress) as bar, ThreadPoolExecutor(max_workers=1) as pool, readers:
        task = bar.add_task(label, total=sum(map(len, chunks)), completed=done)
        pending = pool.submit(decode_chunk, extractor, chunks[todo[0]], readers) if todo else None
        for pos, index in enumerate(todo):
            batch, ok = pending.result()
            if pos + 1 < len(todo):
                pending = pool.submit(decode_chunk, extractor, chunks[todo[pos + 1]], readers)
            features = encode_chunk(extractor, batch, ok, dev, bf16, channels_last)
            save_chunk(partial, index, features, ok)
            bar.advance(task, len(ok))
            if on_chunk is not None:
                on_chunk(index, len(chunks))


def ensure_features(
    site_dir: str | Path, fm: str, weights: str | Path | None, *, site: str | None = None, **options: object
) -> Path:
    """Return the store ``SITE_DIR/features``, extracting the (fm, site) entry on first use.

    Parameters
    ----------
    site_dir : str or Path
        A prepared site folder (holding ``manifest.parquet``).
    fm, weights : str, str or Path
        As for :func:`extract_site`.
    site : str, optional
        The site the caller expects; a manifest of another site is an error.
    **options
        Passed to :func:`extract_site` (``tiny``, ``arch``, ``batch_size``, ...).

    Returns
    -------
    Path
        The store root holding the entry.
    """
    site_dir, store = Path(site_dir), Path(site_dir) / "features"
    if site is not None and (entry_dir(store, fm, site) / PROVENANCE).is_file():
        return store  # the common case on every later message: no manifest read
    _, found, _ = load_site_manifest(site_dir / MANIFEST)
    if site is not None and found != site:
        raise ExtractionError(f"{site_dir / MANIFEST}: describes site {found!r}; expected {site!r}")
    if not (entry_dir(store, fm, found) / PROVENANCE).is_file():
        extract_site(site_dir / MANIFEST, fm, weights, store, **options)
    return store


def node_store(node_config: Mapping[str, object], store: str, fm: str, site: str) -> str:
    """The store a Flower node reads: a prepared site folder gets its features extracted first.

    When ``store`` (the node's ``data-path``) is a prepared site folder and the node config
    names ``weights`` (or ``weights-<fm>``), the (fm, site) entry is extracted into
    ``<data-path>/features`` on first use (``fm-arch`` and ``tiny`` are honoured) and that
    store is returned; otherwise ``store`` is returned unchanged.
    """
    weights = node_config.get(f"weights-{fm}", node_config.get("weights"))
    if not store or weights is None or not (Path(store) / MANIFEST).is_file():
        return store
    arch = str(node_config.get("fm-arch", "")) or None
    return str(ensure_features(store, fm, str(weights), site=site, tiny=bool(node_config.get("tiny", False)),
                               arch=arch, show_progress=False))

