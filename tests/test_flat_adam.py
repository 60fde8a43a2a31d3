"""`strategies.flat_adam.FlatAdam` against ``torch.optim.Adam``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from strategies.base import grad_buffer, input_major_
from strategies.flat_adam import FlatAdam
from strategies.fused_adam import optimizer_step


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(40, 64), nn.Tanh(), nn.Linear(64, 8), nn.Tanh(), nn.Linear(8, 3))
    input_major_(net, 40)  # the first weight stored (in, out), as training keeps it
    return net


@pytest.mark.parametrize("in_place", [False, True])
def test_flat_adam_follows_torch_adam_with_skips_and_decay(in_place):
    nets = [_net(), _net()]
    opts = [torch.optim.Adam(nets[0].parameters(), lr=3e-2, weight_decay=1e-2),
            FlatAdam(nets[1].parameters(), 3e-2, weight_decay=1e-2)]
    for i in range(30):
        x = torch.randn(16, 40, generator=torch.Generator().manual_seed(i))
        for net, opt in zip(nets, opts, strict=True):
            last = net[4]
            if in_place and opt is opts[1]:
                # A hand-written update: every gradient overwritten in place, the last
                # layer's dropped on skipped steps (its grad None, as torch's Adam skips it).
                params = list(net.parameters())
                grads = torch.autograd.grad(net(x).pow(2).sum(), params)
                for p, g in zip(params, grads, strict=True):
                    grad_buffer(p).copy_(g)
            else:
                opt.zero_grad(set_to_none=True)
                net(x).pow(2).sum().backward()
            if i % 3 == 0:
                last.weight.grad = last.bias.grad = None
            optimizer_step(opt)
    for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    assert nets[1][0].weight.stride() == (1, 64)
    counts = opts[1]._adam.adam.counts
    assert counts.tolist() == [30, 30, 30, 30, 20, 20]


def test_parameters_and_gradients_live_in_the_flat_buffers():
    net = _net()
    opt = FlatAdam(net.parameters(), 1e-3)
    flat_p, flat_g = opt._adam.adam.p, opt._adam.adam.g
    lo, hi = flat_p.data_ptr(), flat_p.data_ptr() + 4 * flat_p.numel()
    assert all(lo <= p.data_ptr() < hi and p.data_ptr() % 64 == 0 for p in net.parameters())
    net(torch.randn(4, 40)).sum().backward()
    opt.step()
    glo, ghi = flat_g.data_ptr(), flat_g.data_ptr() + 4 * flat_g.numel()
    assert all(glo <= p.grad.data_ptr() < ghi and p.grad.stride() == p.stride() for p in net.parameters())
    net.double()
    with pytest.raises(RuntimeError, match="moved"):
        opt.step()


def test_bad_parameters_raise_and_hooks_take_step():
    with pytest.raises(ValueError, match="float32 CPU"):
        FlatAdam(nn.Linear(3, 2).double().parameters(), 1e-3)
    net = _net()
    opt = FlatAdam(net.parameters(), 1e-3)
    calls = []
    opt.register_step_post_hook(lambda *_: calls.append(1))
    net(torch.randn(4, 40)).sum().backward()
    optimizer_step(opt)
    assert calls == [1]
