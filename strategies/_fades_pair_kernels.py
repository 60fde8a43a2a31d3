"""The compiled parts of FADES' pair-CMI step (`strategies.fades_cmi.add_pair_cmi_grad`).

The head's second layer on all N² latent pairs, and the gradient from its logits back to
the first layer's two halves, in loops over the pairs that never hold the (N², h)
activations or their gradient: at batch 32 torch spends more on its forty small calls
and on four passes over those 1 MiB tensors than on the arithmetic. The softmax between
the two halves is torch's (vectorised exp; numba's is a scalar call per element), and
so are the GEMMs on either side (`pair_inputs` lays the two halves' inputs out as one).

The logits take two pairs and up to four classes per pass over the hidden units: one
load of each weight serves both pairs, and the eight sums are independent chains, where
one sum per pass waits on its own previous add (1.1–1.3× faster at K = 4 and 8). With
torch's softmax and vectorised logit gradients, the pair step for both heads of a
batch-32 update went from 489 to 398 µs; with four or eight classes per pass in the
backward and four GEMMs instead of eight, from 523 to 442 µs in a training loop.

A module of its own, compiled on a FADES model's first update: numba is not loaded by
processes that never train one.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _class_offsets(w2: np.ndarray) -> np.ndarray:
    """The second layer's rows less class 0's, padded with zero rows to a multiple of 4.

    The softmax ignores a shift common to all classes: measured from class 0, the logits
    need K − 1 products per pair, and so does the gradient (`pair_grads`).
    """
    k1, h = w2.shape[0] - 1, w2.shape[1]
    dw = np.zeros((4 * ((k1 + 3) // 4), h), np.float32)
    for c in range(k1):
        dw[c] = w2[c + 1] - w2[0]
    return dw


@njit(cache=True, nogil=True, fastmath=True, inline="always")
def _leaky2(ai: np.ndarray, rj: np.ndarray, rk: np.ndarray, t: int, slope: np.float32,
            ) -> tuple[np.float32, np.float32]:
    """LeakyReLU(ai[t] + rj[t]) and LeakyReLU(ai[t] + rk[t]): hidden unit t of pairs (i, j), (i, k)."""
    v, u = ai[t] + rj[t], ai[t] + rk[t]
    return max(v, v * slope), max(u, u * slope)


@njit(cache=True, nogil=True, fastmath=True, inline="always")
def _dots4(ai: np.ndarray, rj: np.ndarray, rk: np.ndarray, dw: np.ndarray, c: int, slope: np.float32,
           ) -> tuple[np.float32, ...]:
    """Rows c..c+3 of ``dw`` against LeakyReLU(ai + rj) and LeakyReLU(ai + rk)."""
    w0, w1, w2, w3 = dw[c], dw[c + 1], dw[c + 2], dw[c + 3]
    s0 = s1 = s2 = s3 = u0 = u1 = u2 = u3 = np.float32(0.0)
    for t in range(ai.shape[0]):
        v, u = _leaky2(ai, rj, rk, t, slope)
        s0 += w0[t] * v
        s1 += w1[t] * v
        s2 += w2[t] * v
        s3 += w3[t] * v
        u0 += w0[t] * u
        u1 += w1[t] * u
        u2 += w2[t] * u
        u3 += w3[t] * u
    return s0, s1, s2, s3, u0, u1, u2, u3


@njit(cache=True, nogil=True, fastmath=True, inline="always")
def _dots8(ai: np.ndarray, rj: np.ndarray, rk: np.ndarray, dw: np.ndarray, slope: np.float32,
           ) -> tuple[np.float32, ...]:
    """Rows 0..7 of ``dw`` against LeakyReLU(ai + rj) and LeakyReLU(ai + rk).

    Five to eight classes in one pass (sixteen independent sums): each LeakyReLU once
    instead of once per four rows, 1.2× faster than two `_dots4` passes at K = 6–9.
    """
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = np.float32(0.0)
    u0 = u1 = u2 = u3 = u4 = u5 = u6 = u7 = np.float32(0.0)
    for t in range(ai.shape[0]):
        v, u = _leaky2(ai, rj, rk, t, slope)
        s0 += dw[0, t] * v
        s1 += dw[1, t] * v
        s2 += dw[2, t] * v
        s3 += dw[3, t] * v
        s4 += dw[4, t] * v
        s5 += dw[5, t] * v
        s6 += dw[6, t] * v
        s7 += dw[7, t] * v
        u0 += dw[0, t] * u
        u1 += dw[1, t] * u
        u2 += dw[2, t] * u
        u3 += dw[3, t] * u
        u4 += dw[4, t] * u
        u5 += dw[5, t] * u
        u6 += dw[6, t] * u
        u7 += dw[7, t] * u
    return s0, s1, s2, s3, s4, s5, s6, s7, u0, u1, u2, u3, u4, u5, u6, u7


@njit(cache=True, nogil=True, fastmath=True, inline="always")
def _dots1(ai: np.ndarray, rj: np.ndarray, rk: np.ndarray, w: np.ndarray, slope: np.float32,
           ) -> tuple[np.float32, np.float32]:
    """Row ``w`` against LeakyReLU(ai + rj) and LeakyReLU(ai + rk) (K = 2: one row in all)."""
    s = u = np.float32(0.0)
    for t in range(ai.shape[0]):
        v = ai[t] + rj[t]
        x = ai[t] + rk[t]
        s += w[t] * max(v, v * slope)
        u += w[t] * max(x, x * slope)
    return s, u


@njit(cache=True, nogil=True)
def pair_inputs(lat: np.ndarray, cols: tuple[int, int, int], x: np.ndarray) -> None:
    """``x = [[z_a, 0], [0, z_r]]`` (2N, d_a + d_r): both halves of a head's first layer in one product.

    ``z_a`` is ``lat[:, ca:ca + da]`` and ``z_r`` the next ``x.shape[1] - da`` columns
    from ``cr``, for ``cols = (ca, da, cr)``. ``x @ W.T`` is then ``W_a z_a`` over
    ``W_r z_r``: one small GEMM where two each paid a cold start.
    """
    ca, da, cr = cols
    n = lat.shape[0]
    x[:] = 0.0
    for i in range(n):
        for k in range(da):
            x[i, k] = lat[i, ca + k]
        for k in range(x.shape[1] - da):
            x[n + i, da + k] = lat[i, cr + k]


@njit(cache=True, nogil=True, fastmath=True)
def pair_logits(a: np.ndarray, r: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray, leak: float,
                out: np.ndarray) -> None:
    """``out[c, i, j]``: the second layer (``w2``, ``b2``) on LeakyReLU(a[i] + r[j]), less class 0's.

    ``a`` (N, h) is the first layer on z_a without its bias ``b1``, added here in place;
    ``r`` (N, h) on z_r. ``out`` is (K, N, N) and ``out[0]`` is 0. Float32 throughout: a
    float64 slope would widen every product and halve the vector width.
    """
    for i in range(a.shape[0]):
        for t in range(a.shape[1]):
            a[i, t] += b1[t]
    n, k1 = a.shape[0], w2.shape[0] - 1
    dw, db = _class_offsets(w2), b2[1:] - b2[0]
    slope = np.float32(leak)
    out[0] = 0.0
    for i in range(n):
        ai = a[i]
        for j in range(0, n, 2):
            k = min(j + 1, n - 1)  # odd N: the last row paired with itself
            if k1 == 1:
                s, u = _dots1(ai, r[j], r[k], dw[0], slope)
                out[1, i, j], out[1, i, k] = s + db[0], u + db[0]
                continue
            if dw.shape[0] == 8:
                sums = _dots8(ai, r[j], r[k], dw, slope)
                for q in range(k1):
                    out[q + 1, i, j] = sums[q] + db[q]
                    out[q + 1, i, k] = sums[q + 8] + db[q]
                continue
            for c in range(0, k1, 4):
                sums = _dots4(ai, r[j], r[k], dw, c, slope)
                for q in range(min(4, k1 - c)):
                    out[c + q + 1, i, j] = sums[q] + db[c + q]
                    out[c + q + 1, i, k] = sums[q + 4] + db[c + q]


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
    """The estimate; overwrites the probabilities ``p`` (K, N, N) with dÎ/d(logits).

    Loops run over j innermost, contiguous in ``p``, so that they vectorise.
    """
    k, n = p.shape[0], p.shape[1]
    same = np.empty((n, n), np.float32)
    for i in range(n):
        for j in range(n):
            same[i, j] = s[i] == s[j]
    count = same.sum(axis=0)
    m, c = np.zeros((k, n), np.float32), np.zeros((k, n), np.float32)
    for q in range(k):
        for i in range(n):
            for j in range(n):
                m[q, j] += p[q, i, j]
                c[q, j] += same[i, j] * p[q, i, j]
        m[q] /= n
        c[q] /= count
    g_m, g_c = np.empty_like(m), np.empty_like(c)
    value = (1.0 - beta) * _entropy_grad(m, eps, g_m) - _entropy_grad(c, eps, g_c)
    # dÎ/dp[q, i, j] = g_m[q, j] (1 - β)/N² - [s_i = s_j] g_c[q, j] / (N count_j); then the softmax's.
    g_m *= np.float32((1.0 - beta) / n**2)
    g_c /= n * count
    dot = np.empty(n, np.float32)
    for i in range(n):
        dot[:] = 0.0
        for q in range(k):
            for j in range(n):
                dot[j] += (g_m[q, j] - same[i, j] * g_c[q, j]) * p[q, i, j]
        for q in range(k):
            for j in range(n):
                p[q, i, j] *= g_m[q, j] - same[i, j] * g_c[q, j] - dot[j]
    return value


@njit(cache=True, nogil=True, fastmath=True)
def _pair_back(a: np.ndarray, r: np.ndarray, dw: np.ndarray, d: np.ndarray, leak: float,
               s_a: np.ndarray, s_r: np.ndarray) -> None:
    """Gradient at the first layer's output, summed over j (``s_a``) and over i (``s_r``).

    ``d`` is dÎ/d(logits) (K, N, N); as it sums to 0 over the classes, ``Σ_c d_c w_c``
    equals ``Σ_{c≥1} d_c (w_c − w_0)``: the rows ``dw`` of `_class_offsets`, taken one,
    four or eight at a time in one pass over the hidden units (a pass per class before:
    1.2–1.25× slower at K = 4 and 8). The loops index the 2-D arrays, not row views,
    and spell each case out: either keeps them vectorised.
    """
    n, h = a.shape
    k1, nb = d.shape[0] - 1, dw.shape[0] // 4
    slope, one = np.float32(leak), np.float32(1.0)
    g, row = np.empty(h, np.float32), np.empty(h, np.float32)
    c = np.zeros(dw.shape[0], np.float32)
    s_r[:] = 0.0
    s_a[:] = 0.0
    if k1 == 0:  # one class: the softmax is constant
        return
    for i in range(n):
        # Row i's sum in a local buffer: with s_a and s_r both written in the inner loop
        # the compiler must assume they alias and gives up vectorising it.
        row[:] = 0.0
        for j in range(n):
            for q in range(k1):
                c[q] = d[q + 1, i, j]
            if k1 == 1:
                for t in range(h):
                    g[t] = c[0] * dw[0, t]
            elif nb == 1:
                for t in range(h):
                    g[t] = c[0] * dw[0, t] + c[1] * dw[1, t] + c[2] * dw[2, t] + c[3] * dw[3, t]
            elif nb == 2:
                for t in range(h):
                    g[t] = (c[0] * dw[0, t] + c[1] * dw[1, t] + c[2] * dw[2, t] + c[3] * dw[3, t]
                            + c[4] * dw[4, t] + c[5] * dw[5, t] + c[6] * dw[6, t] + c[7] * dw[7, t])
            else:
                g[:] = 0.0
                for b in range(0, 4 * nb, 4):
                    for t in range(h):
                        g[t] += c[b] * dw[b, t] + c[b + 1] * dw[b + 1, t] + c[b + 2] * dw[b + 2, t] \
                            + c[b + 3] * dw[b + 3, t]
            for t in range(h):
                x = g[t] * (one if a[i, t] + r[j, t] > 0 else slope)
                row[t] += x
                s_r[j, t] += x
        s_a[i, :] = row


@njit(cache=True, nogil=True)
def pair_grads(p: np.ndarray, s: np.ndarray, a: np.ndarray, r: np.ndarray, w2: np.ndarray,
               coefs: tuple[float, float, float], s_a: np.ndarray, s_r: np.ndarray) -> float:
    """Î_β from the pairs' class probabilities, and its gradient at the first layer's two halves.

    ``p`` (K, N, N) is the softmax of `pair_logits` over its first axis (overwritten);
    ``s`` (N,) int64 codes; ``a``, ``r``, ``w2`` as in `pair_logits`; ``coefs = (beta,
    eps, leak)``. Writes dÎ/da into ``s_a`` and dÎ/dr into ``s_r``; returns Î_β.
    """
    beta, eps, leak = coefs
    value = _logit_grads(p, s, beta, eps)
    _pair_back(a, r, _class_offsets(w2), p, leak, s_a, s_r)
    return value


@njit(cache=True, nogil=True)
def add_pair_grads(prod: np.ndarray, cols: tuple[int, int, int], scale: float, d: np.ndarray) -> None:
    """Add ``scale`` times the gradient at z_a and z_r into their columns of ``d`` (N, L).

    ``prod`` (2N, d_a + d_r) is ``[s_a; s_r] @ W`` for `pair_grads`' ``s_a``, ``s_r``: its
    diagonal blocks are dÎ/dz_a (rows ``:N``, columns ``:da``) and dÎ/dz_r.
    """
    ca, da, cr = cols
    n, f = d.shape[0], np.float32(scale)
    for i in range(n):
        for k in range(da):
            d[i, ca + k] += f * prod[i, k]
        for k in range(prod.shape[1] - da):
            d[i, cr + k] += f * prod[n + i, da + k]
