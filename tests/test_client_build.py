"""The client builds a received model without drawing random weights, for every method."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord

from client.app import build_model
from strategies import load_all
from strategies.base import REGISTRY

load_all()


def _cfg(method: str) -> ConfigRecord:
    return ConfigRecord({"method": method, "task": "density", "n-domains": 3,
                         "class-weights": [1.0, 2.0, 0.5, 1.5], "method-config": "{}"})


def _plain_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Tensors held as plain attributes (neither parameters nor buffers) of every submodule."""
    return {f"{name}.{k}": v for name, mod in model.named_modules() for k, v in vars(mod).items()
            if isinstance(v, torch.Tensor)}


@pytest.mark.parametrize("method", sorted(REGISTRY))
def test_built_with_weights_equals_built_then_loaded(method):
    torch.manual_seed(0)
    ref = build_model(_cfg(method), 16)
    weights = {k: v.clone() for k, v in ref.state_dict().items()}
    state = torch.get_rng_state()
    fast = build_model(_cfg(method), 16, weights)
    assert torch.equal(torch.get_rng_state(), state), "no weights should have been drawn"
    assert fast.state_dict().keys() == weights.keys()
    for k, v in fast.state_dict().items():
        assert torch.equal(v, weights[k]), k
    ref_plain, fast_plain = _plain_tensors(ref), _plain_tensors(fast)
    assert ref_plain.keys() == fast_plain.keys()
    for k, v in ref_plain.items():
        assert torch.equal(v, fast_plain[k]), k
    x = torch.randn(5, 16)
    with torch.inference_mode():
        assert torch.equal(ref.eval()(x), fast.eval()(x))


def test_missing_weights_are_an_error_not_garbage():
    weights = build_model(_cfg("unified"), 16).state_dict()
    weights.pop(next(iter(weights)))
    with pytest.raises(RuntimeError, match="Missing key"):
        build_model(_cfg("unified"), 16, weights)


@pytest.mark.parametrize("method", sorted(REGISTRY))
def test_a_reloaded_inference_model_predicts_as_a_fresh_one(method):
    """Reloading the cached inference model with other weights equals building it anew."""
    from client.app import inference_model
    from strategies.core import predict

    x = torch.randn(40, 16).numpy()
    versions = []
    for seed in (1, 2, 1):
        torch.manual_seed(seed)
        versions.append({k: v.clone() for k, v in build_model(_cfg(method), 16).state_dict().items()})
    first = inference_model(_cfg(method), 16, versions[0])
    for weights in versions:
        model = inference_model(_cfg(method), 16, weights)
        assert model is first  # reloaded, not rebuilt
        fresh = build_model(_cfg(method), 16, weights)
        np.testing.assert_array_equal(predict(model, x), predict(fresh, x))
        for k, v in fresh.state_dict().items():
            assert torch.equal(model.state_dict()[k], v), k
    other = inference_model(ConfigRecord(dict(_cfg(method)) | {"class-weights": [1.0] * 4}), 16, versions[0])
    assert other is not first  # another configuration, another model
