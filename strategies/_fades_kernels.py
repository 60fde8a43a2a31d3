"""The compiled pieces of FADES' hand-written update (`strategies.fades_update`).

The losses and the latent's bookkeeping (cross-entropies, L1 reconstruction,
reparameterisation and KL, the discriminator's BCE, gathering the heads' gradients):
each one call on a few (32, ≤ 2048) arrays where torch made five to fifteen, each
paying its dispatch and a pass over memory. With the pair step's float32 arithmetic and
K − 1 products per pair, they took a batch-32 update at bench_grid's FM width (2048)
from 4.2 to 3.6 ms (same process pairs, medians of 7). `leaky_back_` likewise does
LeakyReLU's backward and the bias gradient below it in one pass where torch made two.
The pair-CMI step has a module of its own (`strategies._fades_pair_kernels`).

A module of its own, imported with `strategies.fades_update` on a FADES model's first
update: numba is not loaded by processes that never train one.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def leaky_back_(d: np.ndarray, ref: np.ndarray, slope: float, bias_grad: np.ndarray) -> None:
    """LeakyReLU's backward in place on ``d`` (the slope where ``ref`` is not > 0); column sums too.

    ``ref`` is the pre-activation. The column sums of the result, into ``bias_grad``, are
    the bias gradient of the layer below, which torch would take in a second pass over
    ``d``; an empty ``bias_grad`` skips them.
    """
    keep = np.float32(slope)
    sums = bias_grad.shape[0] > 0
    if sums:
        bias_grad[:] = 0.0
    for i in range(d.shape[0]):
        for t in range(d.shape[1]):
            if not ref[i, t] > 0:  # torch's test: a NaN input takes the slope
                d[i, t] *= keep
            if sums:
                bias_grad[t] += d[i, t]


# Reassociation only (to vectorise the sum): a NaN residual must stay NaN, as in torch.
@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def l1_sign_(x: np.ndarray, scale: float) -> float:
    """Sum of ``|x|`` over a 2-D array; overwrites ``x`` with ``scale · sign(x)`` (0 at 0, NaN at NaN).

    The L1 reconstruction term and its gradient in one pass over the (N, d) residual,
    where torch's abs, sum, sign and scale make four, each out of cache at d = 2048.
    """
    total = 0.0  # float64: d · N terms
    up, down, zero = np.float32(scale), np.float32(-scale), np.float32(0.0)
    for i in range(x.shape[0]):
        for t in range(x.shape[1]):
            v = x[i, t]
            total += abs(v)
            x[i, t] = up if v > 0 else (down if v < 0 else (zero if v == 0 else v))
    return total


@njit(cache=True, nogil=True)
def softmax_ce_(z: np.ndarray, target: np.ndarray, class_weight: np.ndarray, scale: float) -> float:
    """Class-weighted cross-entropy of logits ``z`` (N, K), mean over the rows with ``target >= 0``.

    Returns Σ_i w_{t_i} CE(z_i, t_i) / #{t_i >= 0} (0 when none) and overwrites ``z`` with
    ``scale`` times its gradient; rows with ``target < 0`` get none. With ``class_weight``
    all ones this is `softmax_cross_entropy` over the known rows; with every target known,
    `weighted_cross_entropy`. One call for what took torch ten on a (32, K) tensor.

    Raises
    ------
    ValueError
        If a target is K or more (torch's ``gather`` would raise too).
    """
    known = 0
    for i in range(z.shape[0]):
        known += target[i] >= 0
    per_row = 1.0 / max(known, 1)
    total = 0.0
    for i in range(z.shape[0]):
        top = z[i, 0]
        for c in range(1, z.shape[1]):
            top = max(top, z[i, c])
        norm = 0.0
        for c in range(z.shape[1]):
            norm += np.exp(z[i, c] - top)
        lse = top + np.log(norm)
        t = target[i]
        if t >= z.shape[1]:
            raise ValueError("a target code is not one of the head's classes")
        w = class_weight[t] * per_row if t >= 0 else 0.0
        if t >= 0:
            total -= w * (z[i, t] - lse)
        for c in range(z.shape[1]):
            z[i, c] = scale * w * (np.exp(z[i, c] - lse) - (c == t))
    return total


@njit(cache=True, nogil=True)
def reparameterise(enc: np.ndarray, eps: np.ndarray, z: np.ndarray) -> float:
    """``z = mu + eps · exp(logvar / 2)`` from the encoder's output ``[mu | logvar]``; returns the KL.

    The KL is `strategies.fades.gaussian_kl`'s: summed over the latent, mean over the rows.
    """
    d, half = z.shape[1], np.float32(0.5)
    kl = 0.0
    for i in range(z.shape[0]):
        for t in range(d):
            mu, logvar = enc[i, t], enc[i, d + t]
            # float32 as torch computes them; std not as sqrt(var), which overflows twice as early.
            std, var = np.exp(half * logvar), np.exp(logvar)
            z[i, t] = mu + eps[i, t] * std
            kl -= 0.5 * (1.0 + logvar - mu * mu - var)
    return kl / z.shape[0]


@njit(cache=True, nogil=True)
def reparameterise_back(enc: np.ndarray, eps: np.ndarray, d_z: np.ndarray, out: np.ndarray) -> None:
    """dL/d[mu | logvar] into ``out`` from dL/dz and the KL of `reparameterise` (batch mean)."""
    (n, d), half = d_z.shape, np.float32(0.5)
    for i in range(n):
        for t in range(d):
            mu, logvar = enc[i, t], enc[i, d + t]
            std, var = np.exp(half * logvar), np.exp(logvar)
            out[i, t] = d_z[i, t] + mu / n
            out[i, d + t] = 0.5 * d_z[i, t] * eps[i, t] * std + 0.5 * (var - 1.0) / n


@njit(cache=True, nogil=True)
def add_head_grads_(d_z: np.ndarray, d_yr: np.ndarray, d_sr: np.ndarray, d_tc: np.ndarray) -> None:
    """Add the heads' input gradients into dL/dz over the blocks ``[z_x, z_y, z_s, z_r]``, in place.

    ``d_yr`` is over the label head's input ``[z_y, z_r]``, ``d_sr`` over ``[z_s, z_r]`` and
    ``d_tc`` over the discriminator's ``[z_y, z_r, z_s]``.
    """
    k = d_yr.shape[1] // 2
    for i in range(d_z.shape[0]):
        for t in range(k):
            d_z[i, k + t] += d_yr[i, t] + d_tc[i, t]
            d_z[i, 2 * k + t] += d_sr[i, t] + d_tc[i, 2 * k + t]
            d_z[i, 3 * k + t] += d_yr[i, k + t] + d_sr[i, k + t] + d_tc[i, k + t]


@njit(cache=True, nogil=True)
def discriminator_bce(real: np.ndarray, fake: np.ndarray, out: np.ndarray) -> float:
    """BCE of D's logits, real rows labelled 1 and permuted rows 0, each half averaged and halved.

    Returns ½ (mean softplus(−real) + mean softplus(fake)); writes its gradient with
    respect to the stacked logits ``[real; fake]`` (2N, 1) into ``out``.
    """
    n = real.shape[0]
    total = 0.0
    for i in range(n):
        for x, sign, row in ((real[i, 0], -1.0, i), (fake[i, 0], 1.0, n + i)):
            v = sign * x  # softplus(v) = max(v, 0) + log1p(exp(-|v|)), stable both ways
            total += max(v, 0.0) + np.log1p(np.exp(-abs(v)))
            out[row, 0] = 0.5 / n * (1.0 / (1.0 + np.exp(-x)) - (sign < 0))
    return 0.5 * total / n
