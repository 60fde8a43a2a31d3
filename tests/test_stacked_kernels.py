"""The stacked steps' compiled passes (`strategies._stacked_kernels`) and scratch tensors, against torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F  # noqa: N812

from strategies._stacked_kernels import back_sum_, bias_act_, ce_grad_bias_, gather_rows_, site_rows_
from strategies.stacked import StackedBatch
from strategies.stacked_layers import NO_EXTRA, scratch

GEN = torch.Generator().manual_seed(0)


def _randn(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=GEN)


@pytest.mark.parametrize("relu", [True, False])
def test_bias_and_activation_are_each_runs_own(relu: bool) -> None:
    h, b = _randn(3, 5, 7), _randn(3, 7)
    want = h + b[:, None]
    bias_act_(h.numpy(), b.numpy(), relu)
    torch.testing.assert_close(h, want.relu() if relu else want, rtol=0, atol=0)


def test_site_rows_weigh_the_known_rows_equally_and_clamp_the_codes() -> None:
    group = torch.tensor([2, -1, 0, 2, -1])
    row, codes = torch.empty(5), torch.empty(5, dtype=torch.int64)
    site_rows_(group.numpy(), row.numpy(), codes.numpy())
    torch.testing.assert_close(row, torch.tensor([1 / 3, 0, 1 / 3, 1 / 3, 0]))
    assert codes.tolist() == [2, 0, 0, 2, 0]
    site_rows_(np.full(5, -1), row.numpy(), codes.numpy())  # nothing known: no weight, no division by 0
    assert row.tolist() == [0.0] * 5


def test_cross_entropy_gradient_and_its_bias_gradient_are_autograds_for_every_run() -> None:
    z, b = _randn(3, 6, 5) * 4, _randn(3, 5)
    target, row = torch.randint(0, 5, (6,), generator=GEN), torch.rand(6, generator=GEN)
    logits = (z + b[:, None]).requires_grad_(True)
    loss = sum((row * F.cross_entropy(logits[r], target, reduction="none")).sum() for r in range(3))
    (want,) = torch.autograd.grad(loss, logits)
    out, gb = torch.empty_like(z), torch.full((3, 5), np.nan)
    ce_grad_bias_(z.numpy(), b.numpy(), target.numpy(), row.numpy(), out.numpy(), gb.numpy())
    torch.testing.assert_close(z, logits.detach())  # the bias is added in place
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(gb, want.sum(1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("extra", "relu"), [(False, True), (True, True), (True, False), (False, False)])
def test_backward_pass_adds_the_second_branch_masks_by_the_relu_and_sums_the_bias_gradient(
        extra: bool, relu: bool) -> None:
    d, other, h = _randn(2, 4, 9), _randn(2, 4, 9), _randn(2, 4, 9).relu()
    want = d + (-0.3 * other if extra else 0)
    want = torch.where(h > 0, want, 0.0) if relu else want
    gb = torch.full((2, 9), np.nan)
    back_sum_(d.numpy(), other.numpy() if extra else NO_EXTRA, -0.3, h.numpy(), gb.numpy(), relu)
    torch.testing.assert_close(d, want)
    torch.testing.assert_close(gb, want.sum(1))


def test_gather_takes_the_rows_and_divides_the_class_weights_by_the_batch_size() -> None:
    x, y, w = _randn(10, 6), torch.arange(10) * 7, torch.rand(10, generator=GEN)
    group, idx = torch.arange(10) - 3, torch.tensor([4, 0, 9])
    xo, yo, wo, go = torch.empty(5, 6), torch.empty(5).long(), torch.empty(5), torch.empty(5).long()
    gather_rows_(x.numpy(), y.numpy(), w.numpy(), group.numpy(), idx.numpy(),
                 xo[:3].numpy(), yo[:3].numpy(), wo[:3].numpy(), go[:3].numpy())
    torch.testing.assert_close(xo[:3], x[idx], rtol=0, atol=0)
    assert yo[:3].tolist() == y[idx].tolist() and go[:3].tolist() == group[idx].tolist()
    torch.testing.assert_close(wo[:3], w[idx] / 3, rtol=0, atol=0)


def test_scratch_is_made_once_per_state_and_batch_size() -> None:
    class Model:
        pass

    model, s, other = Model(), {"w": torch.zeros(3, 4, 5)}, {"w": torch.zeros(3, 4, 5)}

    def batch(n: int) -> StackedBatch:
        return StackedBatch(torch.zeros(n, 4), torch.zeros(n).long(), torch.zeros(n), torch.zeros(n).long())

    first = scratch(model, s, batch(8), {"h": 5, "inv": (5,)})
    assert first["h"].shape == (3, 8, 5) and first["inv"].shape == (3, 5)
    assert scratch(model, s, batch(8), {"h": 5, "inv": (5,)}) is first
    assert scratch(model, s, batch(1), {"h": 5, "inv": (5,)})["h"].shape == (3, 1, 5)
    assert scratch(model, other, batch(8), {"h": 5, "inv": (5,)}) is not first
    assert first.t("w").shape == (3, 5, 4) and first.t("w") is first.t("w")
    x = torch.arange(8.0).reshape(2, 4)
    assert first.shared(x).shape == (3, 2, 4) and first.shared(x, transposed=True).shape == (3, 4, 2)
