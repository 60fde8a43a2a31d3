"""Tensor image transforms shared by the extractors (gray uint8 in, float tensors out).

They run in torch so a batch's preprocessing costs little next to the encoder. Resizing
uses antialiasing when shrinking, as PIL does, so features follow the FMs' own pipelines
closely (not bit-exactly: PIL and torch bicubic kernels differ in the last digits).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def to_unit(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W) -> float32 (1, H, W) in [0, 1]."""
    return torch.from_numpy(np.array(image, dtype=np.float32)).div_(255.0).unsqueeze(0)


def minmax(x: torch.Tensor) -> torch.Tensor:
    """Per-image min-max to [0, 1] (a constant image becomes zeros)."""
    low, high = x.min(), x.max()
    return (x - low) / (high - low) if high > low else torch.zeros_like(x)


def resize(x: torch.Tensor, size: tuple[int, int], mode: str = "bicubic") -> torch.Tensor:
    """(C, H, W) -> (C, *size); antialiased when shrinking; bicubic output clamped to [0, 1]."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    smooth = mode in ("bilinear", "bicubic")
    out = F.interpolate(x.unsqueeze(0), size=size, mode=mode, antialias=smooth,
                        align_corners=False if smooth else None)[0]
    return out.clamp_(0.0, 1.0) if mode == "bicubic" else out


def resize_shortest(x: torch.Tensor, side: int, mode: str = "bicubic") -> torch.Tensor:
    """Scale so the shorter side is ``side`` (aspect kept)."""
    h, w = x.shape[-2:]
    scale = side / min(h, w)
    return resize(x, (max(side, round(h * scale)), max(side, round(w * scale))), mode)


def resize_longest(x: torch.Tensor, side: int, mode: str = "bicubic") -> torch.Tensor:
    """Scale so the longer side is ``side`` (aspect kept)."""
    h, w = x.shape[-2:]
    scale = side / max(h, w)
    return resize(x, (max(1, round(h * scale)), max(1, round(w * scale))), mode)


def pad_square(x: torch.Tensor, value: float = 0.0) -> torch.Tensor:
    """Pad the shorter side symmetrically (extra pixel at the end) to a square."""
    h, w = x.shape[-2:]
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    return F.pad(x, (left, side - w - left, top, side - h - top), value=value)


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """Central ``size`` × ``size`` crop (as torchvision rounds it)."""
    h, w = x.shape[-2:]
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return x[..., top:top + size, left:left + size]


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Repeat gray to len(mean) channels and standardise each."""
    x = x.expand(len(mean), *x.shape[-2:])
    m = torch.tensor(mean, dtype=x.dtype).view(-1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(-1, 1, 1)
    return ((x - m) / s).contiguous()
