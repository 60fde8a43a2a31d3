"""DINOv2 ViT-S/14 (transformers ``Dinov2Model``); the CLS token after LayerNorm, 384-d.

Weights are a Hugging Face folder (``config.json`` + ``model.safetensors``) read with
``local_files_only=True``. Preprocessing is the DINOv2 image processor's: shortest side
to 256 bicubic, centre-crop 224, ImageNet mean/std. The tiny variant (tests and demos
only) has 2 layers, width 64.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from client.extractors import transforms as T  # noqa: N812
from client.extractors.base import Extractor, WeightsError, register_extractor

if TYPE_CHECKING:  # transformers is imported when a model is built
    from transformers import Dinov2Config, PreTrainedModel

EXPECTED = "a Hugging Face DINOv2 folder (config.json + model.safetensors)"
PREPROCESSING = "dinov2-v1: shortest 256 bicubic, crop 224, 3ch, ImageNet mean/std"


class PooledHF(nn.Module):
    """A transformers vision model's ``pooler_output`` (else the first token) as a module."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.hf = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, dim)."""
        out = self.hf(pixel_values=x)
        pooled = getattr(out, "pooler_output", None)
        return (pooled if pooled is not None else out.last_hidden_state[:, 0]).flatten(1)


def config(tiny: bool) -> Dinov2Config:
    """ViT-S/14 (or the tiny test variant) as a ``Dinov2Config``."""
    from transformers import Dinov2Config

    if tiny:
        return Dinov2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
                            patch_size=14, image_size=224)
    return Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4,
                        patch_size=14, image_size=518)


def from_folder(auto_cls: type[PreTrainedModel], folder: str | Path, fm: str, expected: str) -> nn.Module:
    """``auto_cls.from_pretrained(folder, local_files_only=True)`` refusing partial loads."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise WeightsError(f"{fm}: {folder} has no config.json; expected {expected}")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a per-tensor bar is noise inside the extraction bar
    try:
        model, info = auto_cls.from_pretrained(folder, local_files_only=True, output_loading_info=True)
    except Exception as err:
        raise WeightsError(f"{fm}: {folder} could not be loaded ({str(err).splitlines()[0][:300]}); "
                           f"expected {expected}") from None
    if info.get("missing_keys") or info.get("mismatched_keys"):
        bad = sorted(info.get("missing_keys") or [])[:3] or info["mismatched_keys"][:3]
        raise WeightsError(f"{fm}: {folder} lacks weights the model needs ({bad}); expected {expected}")
    return model


def transform(image: np.ndarray) -> torch.Tensor:
    """Gray uint8 -> (3, 224, 224)."""
    x = T.center_crop(T.resize_shortest(T.to_unit(image), 256), 224)
    return T.normalize(x, T.IMAGENET_MEAN, T.IMAGENET_STD)


@register_extractor("dinov2")
def build(weights: str | Path | None, tiny: bool, arch: str | None) -> Extractor:
    """DINOv2 ViT-S/14 (random weights when ``weights`` is None)."""
    from transformers import Dinov2Model

    model = Dinov2Model(config(tiny)) if weights is None else from_folder(Dinov2Model, weights, "dinov2",
                                                                         EXPECTED)
    return Extractor("dinov2", int(model.config.hidden_size), (224, 224), PooledHF(model), transform,
                     PREPROCESSING)
