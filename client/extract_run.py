"""The per-chunk machinery of :mod:`client.extract`: device, forward pass, chunk files."""

from __future__ import annotations

import io
import logging
from concurrent.futures import Executor
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from client.atomic import atomic_write

if TYPE_CHECKING:
    from client.extractors.base import Extractor


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; ``cuda`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r}; expected 'auto', 'cpu' or 'cuda'")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch sees no CUDA GPU; use --device cpu or auto")
    return torch.device(device)


def encode_chunk(extractor: Extractor, batch: torch.Tensor | None, ok: np.ndarray, device: torch.device,
                 bf16: bool, channels_last: bool) -> np.ndarray:
    """Features of a chunk: (len(ok), dim) float32, NaN rows where an image was unreadable."""
    out = np.full((len(ok), extractor.dim), np.nan, dtype=np.float32)
    if batch is None:
        return out
    batch = batch.to(device, non_blocking=True)
    if channels_last:
        batch = batch.contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    with torch.inference_mode(), autocast:
        features = extractor.encode(batch)
    out[ok] = features.float().cpu().numpy()
    return out


def chunk_path(partial: Path, index: int) -> Path:
    """File of chunk ``index`` in a partial folder."""
    return partial / f"chunk-{index:05d}.npz"


def save_chunk(partial: Path, index: int, features: np.ndarray, ok: np.ndarray) -> Path:
    """Save one chunk's features and readable-mask atomically."""
    def write(tmp: Path) -> None:
        buffer = io.BytesIO()
        np.savez(buffer, features=features, ok=ok)
        tmp.write_bytes(buffer.getvalue())
    return atomic_write(chunk_path(partial, index), write)


def load_chunk(partial: Path, index: int) -> tuple[np.ndarray, np.ndarray]:
    """(features, ok) of a saved chunk."""
    with np.load(chunk_path(partial, index), allow_pickle=False) as data:
        return data["features"], data["ok"]


def _read(extractor: Extractor, path: Path) -> torch.Tensor | None:
    """One preprocessed image, or None (logged) when the file is unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            if img.mode != "L":
                raise ValueError(f"mode {img.mode}; expected an 8-bit grayscale PNG")
            return extractor.preprocess(np.asarray(img))
    except (OSError, ValueError) as err:
        logging.getLogger(__name__).warning("%s: unreadable (%s); left out and counted", path, err)
        return None


def decode_chunk(extractor: Extractor, paths: list[Path], readers: Executor
                 ) -> tuple[torch.Tensor | None, np.ndarray]:
    """Read and preprocess a chunk's images in parallel: (stacked tensors or None, readable mask)."""
    tensors = list(readers.map(lambda p: _read(extractor, p), paths))
    ok = np.array([t is not None for t in tensors], dtype=bool)
    kept = [t for t in tensors if t is not None]
    return (torch.stack(kept) if kept else None), ok
