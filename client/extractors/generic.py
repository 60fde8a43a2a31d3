"""Any other FM by name + local path: ``arch="hf"`` or ``arch="open_clip:<model name>"``.

``hf``: a Hugging Face image-model folder (``config.json`` + weights) loaded with
``AutoModel`` offline; the feature is ``pooler_output`` (else the first token), the input
size, mean and std come from its ``preprocessor_config.json`` (else ``config.image_size``
and ImageNet statistics); shortest side resized then centre-cropped. ``open_clip:NAME``:
an open_clip state dict for model ``NAME``, with open_clip's own preprocessing.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from client.extractors import transforms as T  # noqa: N812
from client.extractors.base import Extractor, WeightsError, register_extractor
from client.extractors.clip import clip_extractor, load_clip
from client.extractors.dinov2 import PooledHF, from_folder

HF_EXPECTED = "a Hugging Face image-model folder (config.json + model.safetensors)"


def _side(value: object, default: int) -> int:
    if isinstance(value, dict):
        value = value.get("shortest_edge") or value.get("height") or default
    return int(value or default)


def _hf_preprocessing(folder: Path, config: object) -> tuple[int, int, tuple, tuple]:
    """(resize side, crop side, mean, std) from the folder's processor config."""
    default = int(getattr(config, "image_size", 224) or 224)
    proc_file = folder / "preprocessor_config.json"
    proc = json.loads(proc_file.read_text()) if proc_file.is_file() else {}
    crop = _side(proc.get("crop_size"), _side(proc.get("size"), default))
    side = _side(proc.get("size"), crop)
    mean, std = proc.get("image_mean", T.IMAGENET_MEAN), proc.get("image_std", T.IMAGENET_STD)
    return side, crop, tuple(mean), tuple(std)


@register_extractor("hf")
def build_hf(weights: str | Path | None, tiny: bool, arch: str | None) -> Extractor:
    """A Hugging Face image model from a local folder (weights required)."""
    from transformers import AutoModel

    if weights is None:
        raise WeightsError(f"hf: a weights folder is required; expected {HF_EXPECTED}")
    folder = Path(weights)
    model = PooledHF(from_folder(AutoModel, folder, "hf", HF_EXPECTED)).eval()
    side, crop, mean, std = _hf_preprocessing(folder, model.hf.config)

    def transform(image: np.ndarray) -> torch.Tensor:
        x = T.center_crop(T.resize_shortest(T.to_unit(image), side), crop)
        return T.normalize(x, mean, std)

    with torch.inference_mode():  # the pooled width is only known by running the model
        dim = int(model(torch.zeros(1, len(mean), crop, crop)).shape[1])
    return Extractor("hf", dim, (crop, crop), model, transform,
                     f"hf-v1: shortest {side} bicubic, crop {crop}, mean {mean}, std {std}")


@register_extractor("open_clip")
def build_open_clip(weights: str | Path | None, tiny: bool, arch: str | None) -> Extractor:
    """Any open_clip architecture (``arch="open_clip:ViT-B-16"``) with a local state dict."""
    name = (arch or "").partition(":")[2]
    if not name:
        raise KeyError(f"arch {arch!r}: expected 'open_clip:<model name>', e.g. 'open_clip:ViT-B-16'")
    expected = f"an open_clip state dict for {name}"
    model = load_clip(name, weights, tiny, "open_clip", expected)
    return clip_extractor("open_clip", model, f"open_clip-v1 {name}: open_clip eval preprocessing")
