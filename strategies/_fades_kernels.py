"""The compiled pieces of FADES' hand-written update (`strategies.fades_update`).

The pair-CMI step (`strategies.fades_cmi.pair_cmi_grad`): the head's second layer on
all N² latent pairs, the softmax, both entropy terms and the gradient back to the first
layer's two halves in two loops over the pairs, without the (N², h) activations and
their gradient in memory: at batch 32 torch spends more on its forty small calls and on
four passes over those 1 MiB tensors than on the arithmetic.

The losses and the latent's bookkeeping (cross-entropies, L1 reconstruction,
reparameterisation and KL, the discriminator's BCE, gathering the heads' gradients):
each one call on a few (32, ≤ 2048) arrays where torch made five to fifteen, each
paying its dispatch and a pass over memory. With the pair step's float32 arithmetic and
K − 1 products per pair, they took a batch-32 update at bench_grid's FM width (2048)
from 4.2 to 3.6 ms (same process pairs, medians of 7).

A module of its own, imported with `strategies.fades_update` on a FADES model's first
update: numba is not loaded by processes that never train one.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True, fastmath=True)
def _pair_logits(a: np.ndarray, r: np.ndarray, dw: np.ndarray, db: np.ndarray, leak: float,
                 out: np.ndarray) -> None:
    """``out[k, i, j]`` = second layer on LeakyReLU(a[i] + r[j]), less its class-0 logit.

    ``a`` holds the first layer's bias; ``dw``, ``db`` are the second layer's rows and
    bias less class 0's (`pair_cmi_step`): ``out[0]`` is 0 and K − 1 products remain.
    """
    n, h = a.shape
    # A float64 slope would widen every product to float64 and halve the vector width.
    slope, one = np.float32(leak), np.float32(1.0)
    act = np.empty(h, np.float32)
    for i in range(n):
        for j in range(n):
            for t in range(h):
                v = a[i, t] + r[j, t]
                act[t] = v * (one if v > 0 else slope)
            out[0, i, j] = 0.0
            for c in range(dw.shape[0]):
                s = np.float32(0.0)
                for t in range(h):
                    s += dw[c, t] * act[t]
                out[c + 1, i, j] = s + db[c]


@njit(cache=True, nogil=True)
def _softmax_(z: np.ndarray) -> None:
    """Softmax over the class axis of (K, N, N) logits, in place."""
    for i in range(z.shape[1]):
        for j in range(z.shape[2]):
            top = z[0, i, j]
            for c in range(1, z.shape[0]):
                top = max(top, z[c, i, j])
            total = 0.0
            for c in range(z.shape[0]):
                z[c, i, j] = np.exp(z[c, i, j] - top)
                total += z[c, i, j]
            for c in range(z.shape[0]):
                z[c, i, j] /= total


@njit(cache=True, nogil=True)
def _entropy_grad(q: np.ndarray, eps: float, grad: np.ndarray) -> float:
    """Mean over columns of the entropy over axis 0 of ``q`` (K, N); its gradient into ``grad``."""
    total = 0.0
    for j in range(q.shape[1]):
        for c in range(q.shape[0]):
            log = np.log(q[c, j] + eps)
            total -= q[c, j] * log
            grad[c, j] = -(log + q[c, j] / (q[c, j] + eps))
    return total / q.shape[1]


@njit(cache=True, nogil=True)
def _logit_grads(p: np.ndarray, s: np.ndarray, beta: float, eps: float) -> float:
    """The estimate; overwrites the probabilities ``p`` (K, N, N) with dÎ/d(logits)."""
    k, n = p.shape[0], p.shape[1]
    count = np.zeros(n)
    for i in range(n):
        for j in range(n):
            count[j] += s[i] == s[j]
    m, c = np.zeros((k, n), np.float32), np.zeros((k, n), np.float32)
    for q in range(k):
        for i in range(n):
            for j in range(n):
                m[q, j] += p[q, i, j] / n
                if s[i] == s[j]:
                    c[q, j] += p[q, i, j]
        for j in range(n):
            c[q, j] /= count[j]
    g_m, g_c = np.empty_like(m), np.empty_like(c)
    value = (1.0 - beta) * _entropy_grad(m, eps, g_m) - _entropy_grad(c, eps, g_c)
    d = np.empty(k, np.float32)
    for i in range(n):
        for j in range(n):
            dot = 0.0
            for q in range(k):
                d[q] = g_m[q, j] * ((1.0 - beta) / n**2)
                if s[i] == s[j]:
                    d[q] -= g_c[q, j] / (n * count[j])
                dot += d[q] * p[q, i, j]
            for q in range(k):
                p[q, i, j] *= d[q] - dot
    return value


@njit(cache=True, nogil=True, fastmath=True)
def _pair_back(a: np.ndarray, r: np.ndarray, dw: np.ndarray, d: np.ndarray, leak: float,
               s_a: np.ndarray, s_r: np.ndarray) -> None:
    """Gradient at the first layer's output, summed over j (``s_a``) and over i (``s_r``).

    ``d`` is dÎ/d(logits) (K, N, N); as it sums to 0 over the classes, ``Σ_c d_c w_c``
    equals ``Σ_{c≥1} d_c (w_c − w_0)``: the rows ``dw`` of `_pair_logits`.
    """
    n, h = a.shape
    slope, one = np.float32(leak), np.float32(1.0)
    g, row = np.empty(h, np.float32), np.empty(h, np.float32)
    s_r[:] = 0.0
    s_a[:] = 0.0
    if dw.shape[0] == 0:  # one class: the softmax is constant
        return
    for i in range(n):
        # Row i's sum in a local buffer: with s_a and s_r both written in the inner loop
        # the compiler must assume they alias and gives up vectorising it.
        row[:] = 0.0
        for j in range(n):
            d1 = d[1, i, j]
            for t in range(h):
                g[t] = d1 * dw[0, t]
            for c in range(1, dw.shape[0]):
                dc = d[c + 1, i, j]
                for t in range(h):
                    g[t] += dc * dw[c, t]
            for t in range(h):
                x = g[t] * (one if a[i, t] + r[j, t] > 0 else slope)
                row[t] += x
                s_r[j, t] += x
        s_a[i, :] = row


@njit(cache=True, nogil=True)
def pair_cmi_step(a: np.ndarray, r: np.ndarray, w2: np.ndarray, b2: np.ndarray, s: np.ndarray,
                  beta: float, eps: float, leak: float, s_a: np.ndarray, s_r: np.ndarray) -> float:
    """Î_β on all pairs (a[i], r[j]) and its gradient at the two first-layer halves.

    ``a`` (N, h) is the first layer on z_a with its bias, ``r`` (N, h) on z_r; ``w2``,
    ``b2`` the second layer; ``s`` (N,) int64 codes. Writes dÎ/da into ``s_a`` and
    dÎ/dr into ``s_r``; returns Î_β.
    """
    n = a.shape[0]
    # The softmax ignores a shift common to all classes: measured from class 0, the
    # logits need K − 1 products per pair, and so does the gradient (`_pair_back`).
    dw, db = w2[1:] - w2[0], b2[1:] - b2[0]
    p = np.empty((w2.shape[0], n, n), np.float32)
    _pair_logits(a, r, dw, db, leak, p)
    _softmax_(p)
    value = _logit_grads(p, s, beta, eps)
    _pair_back(a, r, dw, p, leak, s_a, s_r)
    return value


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
