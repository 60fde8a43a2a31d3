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
def l1_residual_(out: np.ndarray, bias: np.ndarray, target: np.ndarray, scale: float,
                 bias_grad: np.ndarray) -> float:
    """Sum of ``|out + bias - target|`` over (N, d); overwrites ``out`` with ``scale · sign`` of it.

    The sign is 0 at 0 and NaN at NaN; ``bias_grad`` gets the column sums of the new
    ``out``. The decoder's last bias, the residual, the L1 reconstruction term, its
    gradient and the bias's gradient in one pass over (N, d), where torch's bias copy
    (of ``addmm``), subtraction, abs, sum, sign, scale and column sum made seven, each
    out of cache at d = 2048.
    """
    total = 0.0  # float64: d · N terms
    up, down, zero = np.float32(scale), np.float32(-scale), np.float32(0.0)
    bias_grad[:] = 0.0
    for i in range(out.shape[0]):
        for t in range(out.shape[1]):
            v = (out[i, t] + bias[t]) - target[i, t]
            total += abs(v)
            out[i, t] = up if v > 0 else (down if v < 0 else (zero if v == 0 else v))
            bias_grad[t] += out[i, t]
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
def reparameterise(enc: np.ndarray, eps: np.ndarray, z: np.ndarray, var: np.ndarray) -> float:
    """``z = mu + eps · exp(logvar / 2)`` from the encoder's output ``[mu | logvar]``; returns the KL.

    The KL is `strategies.fades.gaussian_kl`'s: summed over the latent, mean over the rows.
    For `reparameterise_back`, ``eps`` is overwritten with ``eps · std`` and ``var`` gets
    ``std²`` (within two ulps of ``exp(logvar)``, and overflowing with it): one scalar
    ``exp`` per element, where the two passes took four (a third of their 60 µs at
    batch 32).
    """
    d, half = z.shape[1], np.float32(0.5)
    kl = 0.0
    for i in range(z.shape[0]):
        for t in range(d):
            mu, logvar = enc[i, t], enc[i, d + t]
            # float32 as torch computes them; std not as sqrt(var), which overflows twice as early.
            std = np.exp(half * logvar)
            eps[i, t] *= std
            var[i, t] = std * std
            z[i, t] = mu + eps[i, t]
            kl -= 0.5 * (1.0 + logvar - mu * mu - var[i, t])
    return kl / z.shape[0]


@njit(cache=True, nogil=True)
def reparameterise_back(enc: np.ndarray, noise: np.ndarray, var: np.ndarray, d_z: np.ndarray,
                        out: np.ndarray) -> None:
    """dL/d[mu | logvar] into ``out`` from dL/dz and the KL (batch mean) of `reparameterise`.

    ``noise`` and ``var`` are what `reparameterise` left in its ``eps`` and ``var``.
    """
    (n, d), half = d_z.shape, np.float32(0.5)
    for i in range(n):
        for t in range(d):
            out[i, t] = d_z[i, t] + enc[i, t] / n
            out[i, d + t] = half * d_z[i, t] * noise[i, t] + half * (var[i, t] - 1) / n


@njit(cache=True, nogil=True)
def discriminator_input(z: np.ndarray, p_y: np.ndarray, p_r: np.ndarray, p_s: np.ndarray,
                        out: np.ndarray) -> None:
    """D's input on real and shuffled rows: ``out`` (2N, 3k) from ``z = [z_x, z_y, z_s, z_r]`` (N, 4k).

    Rows ``:N`` are ``[z_y, z_r, z_s]``; rows ``N:`` the same blocks with each block's rows
    taken in its own order ``p_y``, ``p_r``, ``p_s`` (`strategies.fades.permute_blocks`).
    One pass where torch made three index calls and two concatenations.
    """
    n, k = z.shape[0], z.shape[1] // 4
    for i in range(n):
        for t in range(k):
            out[i, t], out[n + i, t] = z[i, k + t], z[p_y[i], k + t]
            out[i, k + t], out[n + i, k + t] = z[i, 3 * k + t], z[p_r[i], 3 * k + t]
            out[i, 2 * k + t], out[n + i, 2 * k + t] = z[i, 2 * k + t], z[p_s[i], 2 * k + t]


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
