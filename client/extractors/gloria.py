"""GLoRIA: ResNet-50 with ``fc = Identity``, input upsampled to 299 in the model; 2048-d.

Preprocessing (their code): resize so the longest side is 256 keeping the aspect, pad to
256×256, centre-crop 224, gray to three channels, ``(x - 0.5) / 0.5``; the encoder then
upsamples to 299×299 (bilinear, ``align_corners=True``) before the trunk. The feature is
the pooled 2048-d vector (GLoRIA's 768-d ``global_embedder`` is not used).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from client.extractors import transforms as T  # noqa: N812
from client.extractors.base import Extractor, register_extractor
from client.extractors.checkpoint import load_checkpoint, load_prefixed, take
from client.extractors.resnets import resnet

EXPECTED = ("GLoRIA's Lightning checkpoint (.ckpt: a dict with 'state_dict', keys "
            "'gloria.img_encoder.model.*')")
SIZE, MODEL_SIZE = 224, 299
PREPROCESSING = "gloria-v1: longest 256, pad, crop 224, 3ch, (x-0.5)/0.5, in-model 299 bilinear"


class GloriaEncoder(nn.Module):
    """Upsample to 299 (as GLoRIA's forward does), then the ResNet trunk."""

    def __init__(self, tiny: bool) -> None:
        super().__init__()
        self.model = resnet(tiny, nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 224, 224) -> (B, 2048)."""
        x = F.interpolate(x, size=(MODEL_SIZE, MODEL_SIZE), mode="bilinear", align_corners=True)
        return self.model(x)


def transform(image: np.ndarray) -> torch.Tensor:
    """Gray uint8 -> (3, 224, 224)."""
    x = T.pad_square(T.resize_longest(T.to_unit(image), 256, "bicubic"))
    return T.normalize(T.center_crop(x, SIZE), (0.5,) * 3, (0.5,) * 3)


@register_extractor("gloria")
def build(weights: str | Path | None, tiny: bool, arch: str | None) -> Extractor:
    """GLoRIA's image encoder (random weights when ``weights`` is None)."""
    encoder = GloriaEncoder(tiny)
    if weights is not None:
        ckpt = load_checkpoint(weights, "gloria", EXPECTED)
        state = take(ckpt, "state_dict", "gloria", weights, EXPECTED)
        load_prefixed(encoder.model, state, "gloria.img_encoder.model.", "gloria", weights, EXPECTED)
    return Extractor("gloria", 2048, (SIZE, SIZE), encoder, transform, PREPROCESSING)
