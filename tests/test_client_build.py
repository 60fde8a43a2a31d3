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


def test_an_inference_model_is_reloaded_unless_it_holds_those_very_bytes(monkeypatch):
    """Every site of an in-process run evaluates the same record: loaded once, still right."""
    import pickle
    from collections import OrderedDict

    import client.app as app
    from client.payload import numpy_record
    from client.records import copy_record

    monkeypatch.setattr(app, "_INFERENCE", OrderedDict())
    loads = []
    real = app._load
    monkeypatch.setattr(app, "_load", lambda model, weights: (loads.append(1), real(model, weights)))
    records = []
    for seed in (3, 4):
        torch.manual_seed(seed)
        records.append(numpy_record(build_model(_cfg("unified"), 16).state_dict()))
    a, b = records
    steps = [(a, 1), (copy_record(a), 0), (b, 1), (pickle.loads(pickle.dumps(a)), 1)]  # noqa: S301
    for record, expected_loads in steps:
        before = len(loads)
        model = app.inference_model(_cfg("unified"), 16, record)
        assert len(loads) - before == expected_loads
        want = build_model(_cfg("unified"), 16, record)
        for k, v in want.state_dict().items():
            assert torch.equal(model.state_dict()[k], v), k


@pytest.mark.parametrize("method", sorted(REGISTRY))
def test_a_model_made_from_the_prototype_trains_as_a_constructed_one(method):
    """Local updates from a cloned and from a constructed model (same weights, seed) agree bitwise."""
    from client.app import _model_key, _NoRandomInit, _prototype, _recipe
    from client.payload import numpy_record
    from strategies.core import ArrayData, HParams, fit_steps

    cfg = _cfg(method)
    torch.manual_seed(0)
    weights = numpy_record(build_model(cfg, 16).state_dict())
    prototype = _prototype(*_model_key(cfg, 16))
    before = {k: v.clone() for k, v in prototype.state_dict().items()} if prototype is not None else {}
    cls, config, spec = _recipe(*_model_key(cfg, 16))
    with _NoRandomInit():
        constructed = cls(spec, config)
    constructed.load_state_dict(build_model(cfg, 16, weights).state_dict())
    rng = np.random.default_rng(1)
    data = ArrayData(rng.normal(size=(64, 16)).astype(np.float32), rng.integers(0, 4, 64),
                     rng.integers(0, 3, 64), np.arange(64),
                     {"density": rng.integers(0, 4, 64), "age_band": rng.integers(0, 3, 64)})
    trained = []
    for model in (build_model(cfg, 16, weights), constructed):
        model.begin_round({})
        model.configure_optimizer(1e-2)
        torch.manual_seed(7)  # as the client seeds each message (methods may draw noise)
        fit_steps(model, data, HParams(16, 1e-2, 1), 6, seed=5)
        trained.append(model.state_dict())
    for k, v in trained[0].items():
        assert torch.equal(v, trained[1][k]), k
    if prototype is not None:  # training the clone left the prototype as it was
        for k, v in prototype.state_dict().items():
            assert v.numpy().tobytes() == before[k].numpy().tobytes(), k  # bytes: never-filled tensors
