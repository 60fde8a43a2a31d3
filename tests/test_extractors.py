"""FM extractors: real checkpoint layouts round-trip, documented dims, preprocessing, errors."""

from __future__ import annotations

import json
import os
import sys
import types
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from client.extractors import transforms as T  # noqa: N812
from client.extractors.base import WeightsError, load_extractor, randomize_
from client.extractors.checkpoint import StandIn, load_checkpoint

RNG = np.random.default_rng(0)


def _image(h: int = 304, w: int = 182) -> np.ndarray:
    return RNG.integers(0, 256, (h, w), dtype=np.uint8)


def _foreign(name: str, base: type = object, **attrs) -> object:
    """An instance of a class from a module that will not exist at load time."""
    module = types.ModuleType(f"gone_{name.lower()}")
    cls = type(name, (base,), {"__module__": module.__name__})
    module.__dict__[name] = cls
    sys.modules[module.__name__] = module
    obj = cls() if base is object else cls(attrs)
    if base is object:
        obj.__dict__.update(attrs)
    return obj


def _forget(*objs: object) -> None:
    for obj in objs:
        sys.modules.pop(type(obj).__module__, None)


def _features(extractor, images: list[np.ndarray]) -> torch.Tensor:
    with torch.inference_mode():
        return extractor.encode(torch.stack([extractor.preprocess(i) for i in images]))


def _write_mammoclip(model, path) -> None:
    config = _foreign("DictConfig", _content={"model": {"image_encoder": {"name": "tf_efficientnet_b5"}}})
    state = {f"image_encoder.{k}": v for k, v in model.net.state_dict().items() if not k.startswith("_fc")}
    state["text_encoder.embeddings.weight"] = torch.zeros(3, 2)  # the other tower is ignored
    torch.save({"model": state, "config": config, "epoch": 7}, path)
    _forget(config)


def _write_medclip(model, path) -> None:
    state = {f"vision_model.model.{k}": v for k, v in model.state_dict().items()}
    state["text_model.projection_head.weight"] = torch.zeros(512, 768)
    torch.save(state, path)


def _write_gloria(model, path) -> None:
    hparams = _foreign("AttributeDict", dict, cfg=_foreign("DictConfig", _content={"lr": 1e-4}))
    state = {f"gloria.img_encoder.model.{k}": v for k, v in model.model.state_dict().items()}
    state["gloria.img_encoder.global_embedder.weight"] = torch.zeros(768, 2048)
    torch.save({"state_dict": state, "hyper_parameters": hparams, "epoch": 3,
                "pytorch-lightning_version": "1.5.0"}, path)
    _forget(hparams, hparams["cfg"])


def _write_clip(model, path) -> None:
    torch.save(model.clip.state_dict(), path)


def _write_dinov2(model, path) -> None:
    model.hf.save_pretrained(path)


LAYOUTS = {"mammoclip": ("b5-model-best-epoch-7.tar", _write_mammoclip),
           "medclip": ("pytorch_model.bin", _write_medclip),
           "gloria": ("chexpert_resnet50.ckpt", _write_gloria),
           "clip": ("ViT-B-32.pt", _write_clip),
           "dinov2": ("dinov2-small", _write_dinov2)}


@pytest.mark.parametrize("fm", sorted(LAYOUTS))
def test_real_layout_round_trip(fm, tmp_path):
    original = load_extractor(fm, None, tiny=True)
    randomize_(original.model, std=0.05, seed=1)
    name, write = LAYOUTS[fm]
    write(original.model, tmp_path / name)
    loaded = load_extractor(fm, tmp_path / name, tiny=True)
    images = [_image(), _image()]
    expected, got = _features(original, images), _features(loaded, images)
    assert got.shape == (2, original.dim)
    assert expected.std() > 1e-3  # realistic activations, so equality means something
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    other = load_extractor(fm, None, tiny=True)  # a different random model differs
    assert not torch.allclose(_features(other, images), expected, atol=1e-3)


def test_generic_arches_load_the_same_weights(tmp_path):
    dino = randomize_(load_extractor("dinov2", None, tiny=True).model, std=0.05)
    dino.hf.save_pretrained(tmp_path / "hf")
    clip = randomize_(load_extractor("clip", None, tiny=True).model, std=0.05)
    torch.save(clip.clip.state_dict(), tmp_path / "clip.pt")
    images = [_image()]
    (tmp_path / "hf" / "preprocessor_config.json").write_text(json.dumps(  # DINOv2's processor
        {"size": {"shortest_edge": 256}, "crop_size": {"height": 224, "width": 224},
         "image_mean": list(T.IMAGENET_MEAN), "image_std": list(T.IMAGENET_STD)}))
    hf = load_extractor("my-vit", tmp_path / "hf", arch="hf")
    assert hf.name == "my-vit" and hf.dim == 64
    torch.testing.assert_close(_features(hf, images), _features(load_extractor("dinov2", tmp_path / "hf"),
                                                                images))
    oc = load_extractor("my-clip", tmp_path / "clip.pt", tiny=True, arch="open_clip:ViT-B-32-quickgelu")
    torch.testing.assert_close(_features(oc, images),
                               _features(load_extractor("clip", tmp_path / "clip.pt", tiny=True), images))


@pytest.mark.parametrize(("fm", "dim"), [("mammoclip", 2048), ("medclip", 512), ("gloria", 2048),
                                         ("clip", 512), ("dinov2", 384)])
def test_full_size_builds_offline_with_documented_dim(fm, dim, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    extractor = load_extractor(fm, None)
    assert extractor.dim == dim
    assert extractor.input_size == ((1520, 912) if fm == "mammoclip" else (224, 224))
    randomize_(extractor.model, std=0.02)
    size = (64, 64) if fm == "mammoclip" else extractor.input_size  # a small input keeps it fast
    with torch.inference_mode():
        out = extractor.encode(torch.randn(1, 3, *size))
    assert out.shape == (1, dim) and torch.isfinite(out).all()


def test_mammoclip_preprocessing_matches_hand_computation():
    image = _image(1520, 912)
    x = load_extractor("mammoclip", None).preprocess(image)
    unit = image / 255.0
    expected = ((unit - unit.min()) / (unit.max() - unit.min()) - 0.3089279) / 0.2505356
    assert x.shape == (3, 1520, 912)
    np.testing.assert_allclose(x.numpy(), np.broadcast_to(expected, (3, 1520, 912)), atol=1e-5)


def _pil_pad_square(img: Image.Image) -> Image.Image:
    side = max(img.size)
    canvas = Image.new("L", (side, side), 0)
    canvas.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
    return canvas


def test_medclip_and_gloria_preprocessing_match_pil():
    image = np.asarray(Image.fromarray(_image(1520, 912)).resize((91, 152)).resize((912, 1520)))
    medclip = _pil_pad_square(Image.fromarray(image)).resize((224, 224), Image.BICUBIC)
    expected = (np.asarray(medclip) / 255.0 - 0.5863) / 0.2795
    got = load_extractor("medclip", None, tiny=True).preprocess(image)
    assert np.abs(got[0].numpy() - expected).mean() < 0.02 and got.shape == (3, 224, 224)
    small = Image.fromarray(image).resize((round(912 * 256 / 1520), 256), Image.BICUBIC)
    gloria = np.asarray(_pil_pad_square(small))[16:240, 16:240] / 255.0
    got = load_extractor("gloria", None, tiny=True).preprocess(image)
    assert np.abs(got[0].numpy() - (gloria - 0.5) / 0.5).mean() < 0.02


def test_clip_and_dinov2_preprocessing_match_their_libraries():
    import open_clip
    from transformers import BitImageProcessor

    image = np.asarray(Image.fromarray(_image(1520, 912)).resize((91, 152)).resize((912, 1520)))
    rgb = Image.fromarray(image).convert("RGB")
    expected = open_clip.image_transform(224, is_train=False)(rgb)
    got = load_extractor("clip", None, tiny=True).preprocess(image)
    assert got.shape == expected.shape and (got - expected).abs().mean() < 0.03
    proc = BitImageProcessor(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224},
                             image_mean=list(T.IMAGENET_MEAN), image_std=list(T.IMAGENET_STD))
    expected = torch.as_tensor(np.asarray(proc(rgb, return_tensors="np")["pixel_values"][0]))
    got = load_extractor("dinov2", None, tiny=True).preprocess(image)
    assert got.shape == expected.shape and (got - expected).abs().mean() < 0.03


def test_missing_weights_name_fm_path_and_expected_file(tmp_path):
    with pytest.raises(WeightsError, match=r"mammoclip: .*nope\.tar not found.*b5-model-best-epoch-7\.tar"):
        load_extractor("mammoclip", tmp_path / "nope.tar")
    with pytest.raises(WeightsError, match=r"dinov2: .*no config\.json"):
        load_extractor("dinov2", tmp_path)
    with pytest.raises(KeyError, match="unknown FM 'biomedclip'"):
        load_extractor("biomedclip", tmp_path)


def test_wrong_checkpoint_gives_clear_error(tmp_path):
    medclip = load_extractor("medclip", None, tiny=True)
    _write_medclip(medclip.model, tmp_path / "pytorch_model.bin")
    with pytest.raises(WeightsError, match=r"gloria: .*pytorch_model\.bin has no 'state_dict'.*Lightning"):
        load_extractor("gloria", tmp_path / "pytorch_model.bin", tiny=True)
    with pytest.raises(WeightsError, match=r"mammoclip: .*has no 'model' entry"):
        load_extractor("mammoclip", tmp_path / "pytorch_model.bin", tiny=True)
    with pytest.raises(WeightsError, match=r"medclip: .*does not fit the medclip architecture"):
        load_extractor("medclip", tmp_path / "pytorch_model.bin")  # tiny weights, full model
    with pytest.raises(WeightsError, match=r"clip: .*does not fit ViT-B-32-quickgelu"):
        load_extractor("clip", tmp_path / "pytorch_model.bin")
    (tmp_path / "junk.tar").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match=r"mammoclip: .*junk\.tar is not a readable torch checkpoint"):
        load_extractor("mammoclip", tmp_path / "junk.tar")


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_never_runs_foreign_code(tmp_path):
    evil = _Evil()
    evil.marker = tmp_path / "pwned"
    torch.save({"model": {"w": torch.ones(2)}, "config": evil}, tmp_path / "ckpt.tar")
    loaded = load_checkpoint(tmp_path / "ckpt.tar", "mammoclip", "x")
    assert not evil.marker.exists()
    assert isinstance(loaded["config"], StandIn)
    torch.testing.assert_close(loaded["model"]["w"], torch.ones(2))


@pytest.mark.parametrize("fm", sorted(LAYOUTS))
def test_demo_weights_load_through_the_real_loaders(fm, tmp_path):
    from client.extractors.demo_weights import write_demo_weights

    path = write_demo_weights(fm, tmp_path, tiny=True, seed=5)
    again = write_demo_weights(fm, tmp_path / "again", tiny=True, seed=5)
    images = [_image()]
    a = _features(load_extractor(fm, path, tiny=True), images)
    torch.testing.assert_close(a, _features(load_extractor(fm, again, tiny=True), images))
    assert a.std() > 1e-3 and not torch.allclose(a, _features(load_extractor(fm, None, tiny=True), images))


def test_clip_reads_openai_torchscript_archive(tmp_path):
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    # OpenAI's ViT-B-32.pt is a TorchScript archive; build a tiny one with the same key layout
    vision = CLIPVisionCfg(layers=2, width=64, head_width=64, patch_size=32, image_size=224)
    text = CLIPTextCfg(context_length=16, vocab_size=64, width=64, heads=1, layers=1)
    model = randomize_(CLIP(64, vision, text, quick_gelu=True).eval(), std=0.05)
    mask = model._buffers.pop("attn_mask")  # OpenAI's archives keep the mask out of the state dict
    model.attn_mask = mask
    image, tokens = torch.randn(2, 3, 224, 224), torch.randint(0, 64, (2, 16))
    with warnings.catch_warnings():  # torch.jit.trace is deprecated, the archives remain
        warnings.simplefilter("ignore")
        torch.jit.trace(model, (image, tokens), check_trace=False).save(tmp_path / "ViT-B-32.pt")
    loaded = load_extractor("clip", tmp_path / "ViT-B-32.pt")
    with torch.inference_mode():
        expected, got = model.encode_image(image), loaded.encode(image)
    assert loaded.dim == 64
    # the loader casts weights through fp16, as OpenAI's were stored
    assert torch.nn.functional.cosine_similarity(got, expected).min() > 0.999
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-2)
