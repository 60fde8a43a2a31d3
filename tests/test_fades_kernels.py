"""The compiled pieces of FADES' hand-written update against independent oracles.

`tests/test_fades.py` checks the whole update against autograd step by step; these pin
each kernel on its own, at edge cases a training batch rarely reaches (unknown targets,
saturated logits, exact zeros).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import log_softmax
from torch.distributions import Normal, kl_divergence
from torch.nn import functional as F  # noqa: N812

from strategies._fades_kernels import (
    discriminator_bce,
    discriminator_input,
    l1_residual_,
    leaky_back_,
    reparameterise,
    softmax_ce_,
)

RNG = np.random.default_rng(0)


def test_softmax_ce_matches_scipy_and_skips_unknown_targets() -> None:
    z = RNG.standard_normal((9, 4)).astype(np.float32) * 3
    target = np.array([0, 3, -1, 2, 1, -1, 0, 3, 2])
    weight = np.array([0.5, 1.0, 2.0, 4.0], np.float32)
    known = target >= 0
    log_p = log_softmax(z.astype(np.float64), axis=1)
    rows = np.flatnonzero(known)
    want = -(weight[target[rows]] * log_p[rows, target[rows]]).sum() / known.sum()
    grad = z.copy()
    got = softmax_ce_(grad, target, weight, 3.0)
    assert abs(got - want) < 1e-5 * want
    t = np.clip(target, 0, None)
    row = 3.0 * weight[t] * known / known.sum()
    want_grad = row[:, None] * (np.exp(log_p) - np.eye(4)[t])
    np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-7)


def test_softmax_ce_without_known_rows_is_zero_with_zero_gradient() -> None:
    z = RNG.standard_normal((4, 3)).astype(np.float32)
    assert softmax_ce_(z, np.full(4, -1), np.ones(3, np.float32), 1.0) == 0.0
    assert not z.any()


def test_softmax_ce_rejects_a_target_beyond_the_classes() -> None:
    with pytest.raises(ValueError, match="not one of the head's classes"):
        softmax_ce_(np.zeros((2, 3), np.float32), np.array([0, 3]), np.ones(3, np.float32), 1.0)


def test_discriminator_bce_matches_torch_even_when_saturated() -> None:
    real = np.array([[0.3], [-2.0], [60.0], [-80.0]], np.float32)
    fake = np.array([[1.5], [-0.1], [-70.0], [90.0]], np.float32)
    logits = torch.tensor(np.concatenate([real, fake]), requires_grad=True)
    r, f = logits.split(4)
    want = 0.5 * (F.binary_cross_entropy_with_logits(r, torch.ones_like(r))
                  + F.binary_cross_entropy_with_logits(f, torch.zeros_like(f)))
    want.backward()
    grad = np.empty((8, 1), np.float32)
    got = discriminator_bce(real, fake, grad)
    assert abs(got - want.item()) < 1e-5 * want.item()
    np.testing.assert_allclose(grad, logits.grad.numpy(), rtol=1e-5, atol=1e-8)


def test_l1_residual_sums_magnitudes_and_leaves_zero_at_zero() -> None:
    out, target = (RNG.standard_normal((5, 7)).astype(np.float32) for _ in range(2))
    bias = RNG.standard_normal(7).astype(np.float32)
    target[1, 2], target[3, 0] = out[1, 2] + bias[2], out[3, 0] + bias[0]  # exact zeros
    x = (out + bias) - target
    want_sum, want_grad = np.abs(x.astype(np.float64)).sum(), 0.25 * np.sign(x)
    bias_grad = np.full(7, np.nan, np.float32)  # stale values must be overwritten
    assert abs(l1_residual_(out, bias, target, 0.25, bias_grad) - want_sum) < 1e-9 * want_sum
    np.testing.assert_array_equal(out, want_grad.astype(np.float32))
    assert out[1, 2] == 0 and out[3, 0] == 0
    np.testing.assert_allclose(bias_grad, want_grad.sum(0), rtol=1e-6)


def test_l1_residual_keeps_a_nan_residual_visible() -> None:
    out = np.array([[1.0, np.nan, -2.0]], np.float32)
    zeros = np.zeros(3, np.float32)
    assert np.isnan(l1_residual_(out, zeros, np.zeros((1, 3), np.float32), 1.0, np.empty(3, np.float32)))
    assert out[0, 0] == 1.0 and np.isnan(out[0, 1]) and out[0, 2] == -1.0


def test_reparameterise_kl_matches_torch_distributions() -> None:
    mu, logvar = (RNG.standard_normal((6, 8)).astype(np.float32) for _ in range(2))
    eps = RNG.standard_normal((6, 8)).astype(np.float32)
    z, var, noise = np.empty_like(mu), np.empty_like(mu), eps.copy()
    got = reparameterise(np.concatenate([mu, logvar], axis=1), noise, z, var)
    std = torch.from_numpy(logvar).mul(0.5).exp()
    want = kl_divergence(Normal(torch.from_numpy(mu), std), Normal(0.0, 1.0)).sum(-1).mean()
    assert abs(got - float(want)) < 1e-5 * float(want)
    np.testing.assert_allclose(z, mu + eps * std.numpy(), rtol=1e-6, atol=1e-6)
    # What the backward reads: eps · std and the variance.
    np.testing.assert_allclose(noise, eps * std.numpy(), rtol=1e-6)
    np.testing.assert_allclose(var, np.exp(logvar), rtol=1e-6)


@pytest.mark.parametrize("sums", [True, False])
def test_leaky_back_matches_torch_with_the_bias_sums(sums: bool) -> None:
    # Exact zeros and a NaN in the pre-activation: torch takes the slope unless it is > 0.
    pre = RNG.standard_normal((6, 5)).astype(np.float32)
    pre[0, :2], pre[1, 1] = 0.0, np.nan
    d = RNG.standard_normal((6, 5)).astype(np.float32)
    want = torch.ops.aten.leaky_relu_backward(torch.from_numpy(d), torch.from_numpy(pre), 0.2, False)
    bias = np.full(5 if sums else 0, 7.0, np.float32)  # stale values must be overwritten
    leaky_back_(d, pre, 0.2, bias)
    np.testing.assert_array_equal(d, want.numpy())
    if sums:
        np.testing.assert_allclose(bias, want.sum(0).numpy(), rtol=1e-6)


def test_discriminator_input_is_the_real_blocks_then_each_block_shuffled() -> None:
    # Oracle: numpy fancy indexing of each block, as `Fades.discriminator_loss` builds it.
    n, k = 7, 3
    z = RNG.standard_normal((n, 4 * k)).astype(np.float32)
    p_y, p_r, p_s = (RNG.permutation(n) for _ in range(3))
    out = np.full((2 * n, 3 * k), np.nan, np.float32)
    discriminator_input(z, p_y, p_r, p_s, out)
    z_y, z_s, z_r = z[:, k:2 * k], z[:, 2 * k:3 * k], z[:, 3 * k:]
    np.testing.assert_array_equal(out[:n], np.concatenate([z_y, z_r, z_s], axis=1))
    np.testing.assert_array_equal(out[n:], np.concatenate([z_y[p_y], z_r[p_r], z_s[p_s]], axis=1))
