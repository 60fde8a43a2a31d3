"""Mammo-CLIP: EfficientNet-B5 image encoder (lukemelas layout), 2048-d pooled features.

Preprocessing (their code): the prepared 1520×912 crop, gray to three channels, per-image
min-max to [0, 1], then ``(x - 0.3089279) / 0.2505356``. The feature is the global average
pool of the last feature map, before Mammo-CLIP's 512-d projection.

The tiny variant (tests and demos only) is EfficientNet-B0 (1280-d) at 380×228, a quarter
of the side, so CPU tests stay fast; the full model always runs at 1520×912.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from client.extractors import transforms as T  # noqa: N812
from client.extractors.base import Extractor, register_extractor
from client.extractors.checkpoint import load_checkpoint, load_prefixed, take

EXPECTED = ("the Mammo-CLIP checkpoint b5-model-best-epoch-7.tar (a dict with 'model': "
            "keys 'image_encoder._conv_stem...' and a pickled 'config')")
MEAN, STD = 0.3089279, 0.2505356
FULL_SIZE, TINY_SIZE = (1520, 912), (380, 228)
PREPROCESSING = "mammoclip-v1: crop 1520x912, 3ch, minmax, (x-0.3089279)/0.2505356"


class EfficientNetEncoder(nn.Module):
    """EfficientNet trunk + global average pool (no classifier head)."""

    def __init__(self, variant: str) -> None:
        super().__init__()
        from efficientnet_pytorch import EfficientNet

        self.net = EfficientNet.from_name(variant)
        self.dim = int(self.net._fc.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, dim)."""
        return self.net.extract_features(x).mean(dim=(2, 3))


def _transform(size: tuple[int, int]):
    def run(image: np.ndarray) -> torch.Tensor:
        x = T.resize(T.to_unit(image), size, mode="area")
        return T.normalize(T.minmax(x), (MEAN,) * 3, (STD,) * 3)
    return run


def load_weights(model: EfficientNetEncoder, path: str | Path, fm: str = "mammoclip") -> None:
    """Load ``model`` from a Mammo-CLIP ``.tar`` (``image_encoder.*`` keys; ``_fc`` optional)."""
    state = take(load_checkpoint(path, fm, EXPECTED), "model", fm, path, EXPECTED)
    load_prefixed(model.net, state, "image_encoder.", fm, path, EXPECTED, optional=("_fc.",))


@register_extractor("mammoclip")
def build(weights: str | Path | None, tiny: bool, arch: str | None) -> Extractor:
    """Mammo-CLIP's image encoder (random weights when ``weights`` is None)."""
    model = EfficientNetEncoder("efficientnet-b0" if tiny else "efficientnet-b5")
    if weights is not None:
        load_weights(model, weights)
    size = TINY_SIZE if tiny else FULL_SIZE
    return Extractor("mammoclip", model.dim, size, model, _transform(size),
                     PREPROCESSING + (" (tiny 380x228)" if tiny else ""))
