"""The extractor interface, its registry and the shared checkpoint helpers.

An :class:`Extractor` turns one prepared image (8-bit grayscale, H×W, the Mammo-CLIP crop
already applied) into the tensor its FM expects (:meth:`Extractor.preprocess`) and a batch
of those into ``(batch, dim)`` features (:meth:`Extractor.encode`). Each FM module
registers a factory ``(weights_path, tiny, arch) -> Extractor`` under its name with
:func:`register_extractor`; :func:`load_extractor` imports the module on first use, so
importing this package stays cheap. Nothing here downloads: weights are local files.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # belt and braces: loaders pass local paths only

#: Registered FM name -> module that registers it (imported lazily).
_MODULES: dict[str, str] = {
    "mammoclip": "client.extractors.mammoclip",
    "medclip": "client.extractors.medclip",
    "gloria": "client.extractors.gloria",
    "clip": "client.extractors.clip",
    "dinov2": "client.extractors.dinov2",
    "hf": "client.extractors.generic",
    "open_clip": "client.extractors.generic",
}
Factory = Callable[["str | Path | None", bool, "str | None"], "Extractor"]
_REGISTRY: dict[str, Factory] = {}


class WeightsError(ValueError):
    """A weights file is missing or does not hold the layout its FM expects."""


@dataclass
class Extractor:
    """A frozen image encoder and its preprocessing.

    Attributes
    ----------
    name : str
        FM name (the store's ``fm``).
    dim : int
        Feature dimension.
    input_size : tuple of int
        (H, W) of the tensors :meth:`preprocess` returns.
    model : torch.nn.Module
        The encoder; :meth:`encode` calls it.
    transform : callable
        Gray uint8 (H, W) array -> float tensor (C, H, W).
    preprocessing : str
        Version string of the preprocessing, recorded in provenance.
    """

    name: str
    dim: int
    input_size: tuple[int, int]
    model: nn.Module
    transform: Callable[[np.ndarray], torch.Tensor]
    preprocessing: str

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """Gray uint8 (H, W) image -> float32 (C, H, W) tensor at :attr:`input_size`."""
        if image.ndim != 2 or image.dtype != np.uint8:
            raise ValueError(f"{self.name}: expected a 2-D uint8 image, got {image.dtype} {image.shape}")
        return self.transform(image)

    def encode(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) batch -> (B, dim) features."""
        return self.model(batch).flatten(1)


def register_extractor(name: str) -> Callable[[Factory], Factory]:
    """Register a factory ``(weights_path, tiny, arch) -> Extractor`` under ``name``."""
    def wrap(factory: Factory) -> Factory:
        _REGISTRY[name] = factory
        return factory
    return wrap


def known_extractors() -> list[str]:
    """Names :func:`load_extractor` accepts."""
    return sorted(_MODULES)


def load_extractor(
    name: str, weights_path: str | Path | None, tiny: bool = False, arch: str | None = None
) -> Extractor:
    """Build an FM's encoder offline and load its weights.

    Parameters
    ----------
    name : str
        A registered FM (``mammoclip``, ``medclip``, ``gloria``, ``clip``, ``dinov2``), or
        any label when ``arch`` is given.
    weights_path : str or Path or None
        The FM's checkpoint file or folder; ``None`` keeps random weights (benchmarks).
    tiny : bool
        Test-size architecture (tests and demos only; features are not meaningful).
    arch : str, optional
        ``"hf"`` (a Hugging Face image-model folder) or ``"open_clip:<model name>"``
        (an open_clip state dict): adds an FM by name and local path.

    Returns
    -------
    Extractor
        In eval mode, on the CPU, named ``name``.
    """
    key = name if arch is None else arch.split(":", 1)[0]
    if key not in _MODULES:
        raise KeyError(f"unknown FM {name!r}; expected one of {known_extractors()} "
                       "or an arch ('hf' or 'open_clip:<model>')")
    importlib.import_module(_MODULES[key])
    if weights_path is not None and not Path(weights_path).exists():
        raise WeightsError(f"{name}: {weights_path} not found; expected {expected_layout(key)}")
    extractor = _REGISTRY[key](weights_path, tiny, arch)
    extractor.name = name
    extractor.model.eval().requires_grad_(False)
    return extractor


def expected_layout(key: str) -> str:
    """Human description of the checkpoint an FM expects (for error messages)."""
    module = importlib.import_module(_MODULES[key])
    return str(getattr(module, "EXPECTED", "its checkpoint"))


def sha256_of(path: str | Path | None) -> str:
    """SHA-256 of a file, or of a folder's files (names and bytes, sorted); ``random-init`` for None."""
    if path is None:
        return "random-init"
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode())
        with file.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def randomize_(model: nn.Module, std: float = 0.02, seed: int = 0) -> nn.Module:
    """Random weights with realistic activations: fan-in scaled normal noise.

    Matrices and kernels get N(0, 1/fan_in) (activations keep their scale through depth),
    norm weights 1 + N(0, std²), other vectors N(0, std²). Default-initialised CNNs give
    near-zero activations that run slowly on the CPU and make meaningless outputs;
    benchmarks and tests use this instead.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            if param.ndim >= 2:
                param.copy_(noise / float(np.sqrt(param[0].numel())))
            elif pname.endswith("weight"):
                param.copy_(1.0 + std * noise)
            else:
                param.copy_(std * noise)
    return model
