"""CLIP: open_clip ``ViT-B-32-quickgelu`` image tower with its projection; 512-d features.

Weights are an open_clip state dict, or OpenAI's ``.pt`` (a TorchScript archive or state
dict) read with open_clip's ``load_openai_model``; both from a local path only (OpenAI's
weights need QuickGELU, hence the ``-quickgelu`` config). Preprocessing is open_clip's:
shortest side to 224 bicubic, centre-crop 224, OpenAI mean/std. The tiny variant (tests
and demos only) is a ``CLIP`` with a 2-layer, 64-wide vision tower and a 64-d embedding.
"""

from __future__ import annotations

import logging
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from client.extractors import transforms as T  # noqa: N812
from client.extractors.base import Extractor, WeightsError, register_extractor

EXPECTED = "an open_clip state dict for ViT-B-32-quickgelu, or OpenAI's ViT-B-32.pt"
MODEL_NAME = "ViT-B-32-quickgelu"


class ImageTower(nn.Module):
    """``clip.encode_image`` as a module (so the extraction loop treats all FMs alike)."""

    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        self.clip = clip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, embed_dim)."""
        return self.clip.encode_image(x)


def tiny_clip() -> nn.Module:
    """A 2-layer, 64-wide ViT-B/32-shaped CLIP (test size)."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    vision = CLIPVisionCfg(layers=2, width=64, head_width=32, patch_size=32, image_size=224)
    text = CLIPTextCfg(context_length=16, vocab_size=64, width=32, heads=2, layers=1)
    return CLIP(64, vision, text, quick_gelu=True)


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in archive.namelist())


def load_clip(model_name: str, weights: str | Path | None, tiny: bool, fm: str, expected: str) -> nn.Module:
    """Build an open_clip model offline and load a local state dict or OpenAI ``.pt`` into it."""
    import open_clip

    if weights is not None and _is_torchscript(Path(weights)):
        # the archive defines the architecture; a local path never downloads (only known names do)
        with warnings.catch_warnings():  # torch.jit.load's deprecation notice; the format is OpenAI's
            warnings.simplefilter("ignore", FutureWarning)
            return open_clip.load_openai_model(str(weights), precision="fp32", device="cpu")
    level = logging.root.manager.disable
    logging.disable(logging.WARNING)  # open_clip warns "initialized randomly"; weights come next
    try:
        model = tiny_clip() if tiny else open_clip.create_model(model_name, pretrained=None)
    finally:
        logging.disable(level)
    if weights is not None:
        try:
            open_clip.load_checkpoint(model, str(weights), strict=True)
        except Exception as err:
            raise WeightsError(f"{fm}: {weights} does not fit {model_name} "
                               f"({str(err).splitlines()[0][:300]}); expected {expected}") from None
    return model


def clip_transform(model: nn.Module) -> tuple[Callable[[np.ndarray], torch.Tensor], tuple[int, int]]:
    """open_clip's eval preprocessing for ``model`` (from its ``preprocess_cfg``)."""
    cfg = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
    size = model.visual.image_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    mean, std = cfg.get("mean", T.OPENAI_MEAN), cfg.get("std", T.OPENAI_STD)
    squash = cfg.get("resize_mode") == "squash"

    def run(image: np.ndarray) -> torch.Tensor:
        x = T.to_unit(image)
        x = T.resize(x, size) if squash else T.center_crop(T.resize_shortest(x, min(size)), min(size))
        return T.normalize(x, mean, std)
    return run, size


def clip_extractor(name: str, model: nn.Module, version: str) -> Extractor:
    """Wrap an open_clip model's image tower as an :class:`Extractor`."""
    transform, size = clip_transform(model)
    dim = int(model.visual.output_dim)
    return Extractor(name, dim, size, ImageTower(model), transform, version)


@register_extractor("clip")
def build(weights: str | Path | None, tiny: bool, arch: str | None) -> Extractor:
    """CLIP ViT-B/32 (QuickGELU) image encoder (random weights when ``weights`` is None)."""
    model = load_clip(MODEL_NAME, weights, tiny, "clip", EXPECTED)
    return clip_extractor("clip", model, "clip-v1: shortest 224 bicubic, crop 224, 3ch, OpenAI mean/std")
