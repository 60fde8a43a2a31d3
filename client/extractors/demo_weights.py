"""Random weights written in each FM's real checkpoint layout (for tests and demos only).

``fedmammo extract`` always needs a weights file; end-to-end tests and demos without the
real checkpoints use these. Their features carry no meaning.
"""

from __future__ import annotations

from pathlib import Path

import torch

from client.extractors.base import load_extractor, randomize_

#: File (or folder) name each FM's checkpoint usually has.
FILE_NAMES = {"mammoclip": "b5-model-best-epoch-7.tar", "medclip": "pytorch_model.bin",
              "gloria": "chexpert_resnet50.ckpt", "clip": "ViT-B-32.pt", "dinov2": "dinov2-vits14"}


def _state(fm: str, model: torch.nn.Module) -> object:
    if fm == "mammoclip":
        return {"model": {f"image_encoder.{k}": v for k, v in model.net.state_dict().items()}, "config": {}}
    if fm == "medclip":
        return {f"vision_model.model.{k}": v for k, v in model.state_dict().items()}
    if fm == "gloria":
        state = {f"gloria.img_encoder.model.{k}": v for k, v in model.model.state_dict().items()}
        return {"state_dict": state, "hyper_parameters": {}}
    return model.clip.state_dict()


def write_demo_weights(fm: str, folder: str | Path, tiny: bool = True, seed: int = 0) -> Path:
    """Write random (fan-in scaled) weights for ``fm`` in its real layout under ``folder``.

    Parameters
    ----------
    fm : str
        ``mammoclip``, ``medclip``, ``gloria``, ``clip`` or ``dinov2``.
    folder : str or Path
        Where to write; the file is named as in :data:`FILE_NAMES`.
    tiny : bool
        Test-size architecture (load it back with ``tiny=True`` / ``--tiny``).
    seed : int
        Seed of the random weights.

    Returns
    -------
    Path
        The weights file (a folder for ``dinov2``), to pass as ``--weights``.
    """
    if fm not in FILE_NAMES:
        raise KeyError(f"unknown FM {fm!r}; expected one of {sorted(FILE_NAMES)}")
    model = randomize_(load_extractor(fm, None, tiny=tiny).model, seed=seed)
    path = Path(folder) / FILE_NAMES[fm]
    path.parent.mkdir(parents=True, exist_ok=True)
    if fm == "dinov2":
        model.hf.save_pretrained(path)
    else:
        torch.save(_state(fm, model), path)
    return path
