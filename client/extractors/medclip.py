"""MedCLIP: ResNet-50 with its 2048→512 projection as ``fc``; 512-d features.

Preprocessing (their processor): pad to a square, resize to 224 bicubic, one channel
repeated to three, ``(x - 0.5863) / 0.2795``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from client.extractors import transforms as T  # noqa: N812
from client.extractors.base import Extractor, register_extractor
from client.extractors.checkpoint import load_checkpoint, load_prefixed
from client.extractors.resnets import resnet

EXPECTED = "MedCLIP's pytorch_model.bin (a state dict with keys 'vision_model.model.*')"
MEAN, STD, SIZE = 0.5863, 0.2795, 224
PREPROCESSING = "medclip-v1: pad square, 224 bicubic, 3ch, (x-0.5863)/0.2795"


def transform(image: np.ndarray) -> torch.Tensor:
    """Gray uint8 -> (3, 224, 224)."""
    x = T.resize(T.pad_square(T.to_unit(image)), (SIZE, SIZE), "bicubic")
    return T.normalize(x, (MEAN,) * 3, (STD,) * 3)


@register_extractor("medclip")
def build(weights: str | Path | None, tiny: bool, arch: str | None) -> Extractor:
    """MedCLIP's vision encoder (random weights when ``weights`` is None)."""
    model = resnet(tiny, nn.Linear(2048, 512, bias=False))
    if weights is not None:
        state = load_checkpoint(weights, "medclip", EXPECTED)
        load_prefixed(model, state, "vision_model.model.", "medclip", weights, EXPECTED)
    return Extractor("medclip", 512, (SIZE, SIZE), model, transform, PREPROCESSING)
