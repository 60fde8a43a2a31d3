"""Denormals flushed to zero while opted-in methods train (`strategies.denormals`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from strategies import load_all
from strategies.base import REGISTRY, get_method
from strategies.core import ArrayData, HParams, fit_epochs, fit_steps, make_spec
from strategies.denormals import denormals_flushed, flush_denormals
from strategies.stacked import train_stacked

SMALL = {"dann": {"hidden": 16}, "fairdisco": {"bottleneck": 16, "proj_hidden": 24, "proj_dim": 8}}


def _denormal_product() -> float:
    """1e-30 × 1e-10 in float32: 1e-40 is below the smallest normal float32 (1.18e-38)."""
    return float(torch.tensor([1e-30]) * torch.tensor([1e-10]))


def _data(n: int = 40, d: int = 10, seed: int = 0) -> ArrayData:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = (rng.normal(size=(n, d)) + np.eye(3, d)[y]).astype(np.float32)
    return ArrayData(x, y, rng.integers(0, 4, n), np.arange(n))


def test_the_block_flushes_and_the_mode_is_restored_after() -> None:
    assert not denormals_flushed()
    assert _denormal_product() == pytest.approx(1e-40, rel=1e-2)
    with flush_denormals():
        assert denormals_flushed()
        assert _denormal_product() == 0.0
        assert np.float32(1e-30) * np.float32(1e-10) == 0.0  # numpy's (and numba's) arithmetic too
        with flush_denormals():  # nested: the inner block leaves the outer one's mode alone
            pass
        assert denormals_flushed()
    assert not denormals_flushed()
    assert _denormal_product() == pytest.approx(1e-40, rel=1e-2)


def test_disabled_it_changes_nothing_and_an_error_still_restores() -> None:
    with flush_denormals(enabled=False):
        assert not denormals_flushed()
    with pytest.raises(RuntimeError, match="boom"), flush_denormals():
        raise RuntimeError("boom")
    assert not denormals_flushed()


def test_only_the_methods_whose_units_can_die_opt_in() -> None:
    load_all()
    assert {name for name, cls in REGISTRY.items() if cls.flush_denormals} == {"dann", "fairdisco"}


@pytest.mark.parametrize(("method", "flushed"), [("dann", True), ("unified", False), ("groupdro", False)])
def test_per_config_training_runs_in_the_methods_mode(method: str, flushed: bool,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    cls = get_method(method)
    seen: list[bool] = []
    update = cls.update

    def spy(self: object, batch: object) -> dict[str, float]:
        seen.append(denormals_flushed())
        return update(self, batch)

    monkeypatch.setattr(cls, "update", spy)
    data = _data()
    model = cls(make_spec(data, 3, 4), cls.config_cls(**SMALL.get(method, {})))
    model.configure_optimizer(1e-3)
    fit_epochs(model, data, HParams(16, 1e-3, 2), 0)
    fit_steps(model, data, HParams(16, 1e-3, 1), 3, 0)
    assert seen == [flushed] * 9  # 2 epochs × 3 batches, then 3 steps
    assert not denormals_flushed()


@pytest.mark.parametrize("method", list(SMALL))
def test_stacked_runs_train_flushed_and_flushing_leaves_their_weights(method: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    cls = get_method(method)
    data = _data(65, 12, 1)
    config = cls.config_cls(**SMALL[method])
    spec = make_spec(data, 3, 4)
    seen: list[bool] = []
    step = cls.stacked_step

    def spy(*args: object) -> tuple[str, ...] | None:
        seen.append(denormals_flushed())
        return step(*args)

    monkeypatch.setattr(cls, "stacked_step", staticmethod(spy))
    flushed = train_stacked(cls, data, spec, config, (1e-2, 1e-3), 8, 3, seed=3)
    assert seen and all(seen) and not denormals_flushed()
    monkeypatch.setattr(cls, "flush_denormals", False)
    plain = train_stacked(cls, data, spec, config, (1e-2, 1e-3), 8, 3, seed=3)
    assert not any(seen[len(seen) // 2:])
    for a, b in zip(flushed, plain, strict=True):
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-7, msg=k)
