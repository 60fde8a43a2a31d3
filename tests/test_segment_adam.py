"""The compiled Adam of the stacked engines against ``torch.optim.Adam``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from strategies.lockstep_update import SegmentAdam
from strategies.stacked import StackedAdam

# (start, length, lr) of uneven segments with a gap between two: the gap must not move.
SEGMENTS = [(0, 37, 1e-2), (37, 64, 1e-3), (110, 5, 1.0), (115, 300, 3e-4)]


def _reference(p0: torch.Tensor, weight_decay: float) -> list[tuple[torch.nn.Parameter, torch.optim.Adam]]:
    """Every segment as a parameter of its own under torch's (unfused) Adam at its rate."""
    out = []
    for start, length, lr in SEGMENTS:
        param = torch.nn.Parameter(p0[start : start + length].clone())
        out.append((param, torch.optim.Adam([param], lr=lr, weight_decay=weight_decay, foreach=False)))
    return out


@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_segments_follow_torch_adam_with_their_own_rates_and_counts(weight_decay: float) -> None:
    gen = torch.Generator().manual_seed(0)
    p0 = torch.randn(415, generator=gen)
    adam = SegmentAdam(p0.clone(), SEGMENTS, weight_decay)
    ref = _reference(p0, weight_decay)
    for step in range(30):
        grad = torch.randn(415, generator=gen) * 10.0 ** (step % 3 - 2)
        adam.g.copy_(grad)
        # Segment 1 sits out every third step: its count (bias correction) must lag.
        active = np.array([0, 2, 3]) if step % 3 == 0 else None
        adam.step(active)
        for s, ((start, length, _), (param, opt)) in enumerate(zip(SEGMENTS, ref, strict=True)):
            if active is None or s in active:
                param.grad = grad[start : start + length].clone()
                opt.step()
    for (start, length, _), (param, _opt) in zip(SEGMENTS, ref, strict=True):
        torch.testing.assert_close(adam.p[start : start + length], param.detach(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(adam.counts, [30, 20, 30, 30])
    torch.testing.assert_close(adam.p[101:110], p0[101:110], rtol=0, atol=0)  # the gap


def test_parameters_must_be_contiguous_float32_and_segments_inside() -> None:
    with pytest.raises(ValueError, match="contiguous float32"):
        SegmentAdam(torch.zeros(4, 4).T, [(0, 16, 1.0)])
    with pytest.raises(ValueError, match="contiguous float32"):
        SegmentAdam(torch.zeros(16, dtype=torch.float64), [(0, 16, 1.0)])
    with pytest.raises(ValueError, match="past the 16 parameters"):
        SegmentAdam(torch.zeros(16), [(0, 8, 1.0), (8, 9, 1.0)])


def test_stacked_adam_views_are_aligned_and_skipped_parameters_keep_still() -> None:
    gen = torch.Generator().manual_seed(1)
    params = {"w": torch.randn(2, 5, 3, generator=gen), "b": torch.randn(2, 3, generator=gen),
              "v": torch.randn(2, 7, generator=gen)}
    adam = StackedAdam({k: p.clone() for k, p in params.items()}, (1e-2, 1e-3), 0.0)
    for k, p in params.items():
        assert adam.params[k].data_ptr() % 64 == 0
        torch.testing.assert_close(adam.params[k], p, rtol=0, atol=0)
    ref = {k: [torch.nn.Parameter(p[j].clone()) for j in range(2)] for k, p in params.items()}
    opts = [torch.optim.Adam([ref[k][j] for k in ref], lr=lr, foreach=False)
            for j, lr in enumerate((1e-2, 1e-3))]
    for step in range(6):
        skip = ("b",) if step % 2 else ()
        for k in params:
            grad = torch.randn(params[k].shape, generator=gen)
            adam.grads[k].copy_(grad)
            for j in range(2):
                ref[k][j].grad = None if k in skip else grad[j].clone()
        adam.step(skip)
        for opt in opts:
            opt.step()
    for k in params:
        for j in range(2):
            torch.testing.assert_close(adam.params[k][j], ref[k][j].detach(), rtol=1e-5, atol=1e-6, msg=k)
