"""Stacked search runs (`strategies.stacked`) against the per-config path, run by run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from strategies import protocol
from strategies.base import get_method
from strategies.core import ArrayData, HParams, make_spec, train
from strategies.protocol import fit, search
from strategies.stacked import supports_stacked, train_stacked

N_CLASSES, N_DOMAINS = 3, 4
SMALL = {"dann": {"hidden": 16}, "fairdisco": {"bottleneck": 16, "proj_hidden": 24, "proj_dim": 8}}
NOISE = ("projection.0.bias", "projection.1.running_mean")


def ref_model(method: str, spec: object, config: object, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    model = get_method(method)(spec, config)
    model.load_state_dict(state)
    return model


def _data(n: int, d: int, seed: int, shift: float = 0.8) -> ArrayData:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, N_CLASSES, n)
    x = (rng.normal(size=(n, d)) + shift * np.eye(N_CLASSES, d)[y]).astype(np.float32)
    density = rng.integers(-1, 4, n)
    return ArrayData(x, y, rng.integers(0, N_DOMAINS, n), np.arange(n) // 2, {"density": density})


@pytest.mark.parametrize("method", list(SMALL))
@pytest.mark.parametrize(("sensitive", "weight_decay"), [("site", 0.0), ("density", 0.01)])
def test_every_stacked_run_matches_its_own_training(method: str, sensitive: str, weight_decay: float) -> None:
    # 65 rows at batch 8: every epoch ends on a one-row batch, where FairDisCO's
    # projection head gets no gradient (and Adam skips it).
    data = _data(65, 12, 0)
    cls = get_method(method)
    config = cls.config_cls(**SMALL[method], sensitive=sensitive, weight_decay=weight_decay)
    spec = make_spec(data, N_CLASSES, N_DOMAINS, sensitive)
    lrs = (1e-2, 1e-3, 1e-4)
    states = train_stacked(cls, data, spec, config, lrs, 8, 3, seed=7)
    start = train(method, data, spec, config, HParams(8, 1e-2, 0), 7).state_dict()
    for lr, state in zip(lrs, states, strict=True):
        ref = train(method, data, spec, config, HParams(8, lr, 3), 7).state_dict()
        assert state.keys() == ref.keys()
        for k, v in ref.items():
            if v.is_floating_point() and v.dim() == 2:
                assert not torch.equal(v, start[k]), k  # it trained
            # The bias before FairDisCO's BatchNorm has a zero gradient up to round-off, which
            # Adam turns into full-size steps of noise (as in test_fairdisco); BatchNorm removes it.
            if k not in NOISE:
                torch.testing.assert_close(state[k], v, atol=2e-5, rtol=1e-4, msg=k)
        model = cls(spec, config)
        model.load_state_dict(state)
        x = torch.from_numpy(data.x)
        torch.testing.assert_close(model.eval()(x), ref_model(method, spec, config, ref).eval()(x),
                                   atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("method", list(SMALL))
def test_stacked_search_gives_the_per_config_table(method: str) -> None:
    data = _data(240, 10, 1, shift=1.5)
    # lr 0.02 over 3 epochs beats 1e-6 (which barely moves from init) on every fold.
    config = get_method(method).config_cls(**SMALL[method], batch_sizes=(8, 16), lrs=(2e-2, 1e-6),
                                           search_epochs=3)
    fast = search(method, data, N_CLASSES, N_DOMAINS, config, seed=3)
    slow = search(method, data, N_CLASSES, N_DOMAINS, config, seed=3, lockstep=False)
    assert fast[0] == slow[0] and fast[0].lr == 2e-2
    assert fast[1][["batch_size", "lr", "fold"]].equals(slow[1][["batch_size", "lr", "fold"]])
    np.testing.assert_allclose(fast[1]["accuracy"], slow[1]["accuracy"], atol=0.01)


def test_only_adam_configs_of_methods_with_a_stacked_step_train_stacked() -> None:
    dann = get_method("dann")
    assert supports_stacked(dann, dann.config_cls())
    assert not supports_stacked(dann, dann.config_cls(optimizer="sgd"))
    assert not supports_stacked(get_method("fades"), get_method("fades").config_cls())


@pytest.mark.parametrize("method", list(SMALL))
def test_the_retrain_runs_stacked_and_gives_the_per_config_model(method: str, monkeypatch: pytest.MonkeyPatch
                                                                  ) -> None:
    data = _data(70, 12, 2)
    config = get_method(method).config_cls(**SMALL[method], batch_size=8, lr=1e-3, epochs=3)
    slow = fit(method, data, N_CLASSES, N_DOMAINS, config, do_search=False, seed=5, lockstep=False)

    def per_config(*args: object) -> None:
        raise AssertionError("the retrain took the per-config path")

    monkeypatch.setattr(protocol, "train", per_config)
    fast = fit(method, data, N_CLASSES, N_DOMAINS, config, do_search=False, seed=5)
    assert fast.hparams == slow.hparams and not fast.model.training
    assert vars(fast.model).get("lam") == vars(slow.model).get("lam")  # the last epoch's λ (DANN)
    ref = slow.model.state_dict()
    for k, v in fast.model.state_dict().items():
        if k not in NOISE:
            torch.testing.assert_close(v, ref[k], atol=2e-5, rtol=1e-4, msg=k)
    x = torch.from_numpy(data.x)
    torch.testing.assert_close(fast.model(x), slow.model(x), atol=2e-5, rtol=1e-4)
