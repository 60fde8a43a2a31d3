"""`strategies.base.input_major_`: the feature-reading layers' (in, out) memory order."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import strategies.base as base
from client.payload import load_record, numpy_record
from strategies import load_all
from strategies.base import REGISTRY, Batch, TaskSpec, input_major_

DIM = 96


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(DIM, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3))


def test_only_wide_layers_reading_the_features_change_order_not_values():
    net, probe = _net(), nn.Linear(DIM, 4)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    input_major_(net, DIM)
    input_major_(probe, DIM)
    assert net[0].weight.stride() == (1, 64) and net[0].weight.shape == (64, DIM)
    assert net[2].weight.is_contiguous() and net[4].weight.is_contiguous() and probe.weight.is_contiguous()
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    ptr = net[0].weight.data_ptr()
    input_major_(net, DIM)  # a second call keeps the tensor
    assert net[0].weight.data_ptr() == ptr


@pytest.mark.parametrize("name", ["dann", "fairdisco", "fades", "unified"])
def test_training_with_the_layout_follows_training_without_it(name, monkeypatch):
    """The per-config update on input-major weights: the same run up to GEMM round-off."""
    load_all()
    cls = REGISTRY[name]
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((160, DIM), dtype=np.float32))
    y, group = torch.from_numpy(rng.integers(0, 3, 160)), torch.from_numpy(rng.integers(0, 4, 160))

    def run(min_outputs: int) -> nn.Module:
        monkeypatch.setattr(base, "MIN_INPUT_MAJOR", min_outputs)
        torch.manual_seed(0)
        model = cls(TaskSpec(DIM, 3, 4, (1.0, 1.0, 1.0)), cls.config_cls())
        model.configure_optimizer(1e-3)
        model.begin_epoch(0.5)
        for i in range(10):
            rows = slice(16 * i, 16 * (i + 1))
            model.update(Batch(x[rows], y[rows], group[rows], group[rows]))
        return model

    plain, laid_out = run(10**9), run(64)
    changed = [k for k, v in laid_out.state_dict().items() if v.dim() == 2 and not v.is_contiguous()]
    assert bool(changed) == (name != "unified")  # Unified's probe is narrow: left as it is
    for (k, a), b in zip(plain.state_dict().items(), laid_out.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=k)


def test_state_dict_travels_in_c_order_and_loads_into_the_layout():
    src, dst = _net(), _net()
    input_major_(src, DIM)
    input_major_(dst, DIM)
    with torch.no_grad():
        for p in src.parameters():
            p.add_(torch.rand_like(p))
    record = numpy_record(src.state_dict())
    assert np.array_equal(record["0.weight"].numpy(), src[0].weight.detach().numpy())
    load_record(dst, record)
    assert dst[0].weight.stride() == (1, 64)
    pairs = zip(src.state_dict().values(), dst.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
