"""The compiled pair-CMI step of FADES (`strategies.fades_cmi.pair_cmi_grad`).

The head's second layer on all N² latent pairs, the softmax, both entropy terms and the
gradient back to the first layer's two halves in two loops over the pairs, without the
(N², h) activations and their gradient in memory: at batch 32 torch spends more on its
forty small calls and on four passes over those 1 MiB tensors than on the arithmetic.
A module of its own, imported on a FADES model's first update: numba is not loaded by
processes that never train one.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True, fastmath=True)
def _pair_logits(a: np.ndarray, r: np.ndarray, w2: np.ndarray, b2: np.ndarray, leak: float,
                 out: np.ndarray) -> None:
    """``out[k, i, j]`` = second layer on LeakyReLU(a[i] + r[j]) (a holds the first layer's bias)."""
    n, h = a.shape
    act = np.empty(h, np.float32)
    for i in range(n):
        for j in range(n):
            for t in range(h):
                v = a[i, t] + r[j, t]
                act[t] = v if v > 0 else v * leak
            for c in range(w2.shape[0]):
                s = b2[c]
                for t in range(h):
                    s += w2[c, t] * act[t]
                out[c, i, j] = s


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
def _pair_back(a: np.ndarray, r: np.ndarray, w2: np.ndarray, d: np.ndarray, leak: float,
               s_a: np.ndarray, s_r: np.ndarray) -> None:
    """Gradient at the first layer's output, summed over j (``s_a``) and over i (``s_r``)."""
    n, h = a.shape
    g = np.empty(h, np.float32)
    s_a[:] = 0.0
    s_r[:] = 0.0
    for i in range(n):
        for j in range(n):
            g[:] = 0.0
            for c in range(w2.shape[0]):
                dc = d[c, i, j]
                for t in range(h):
                    g[t] += dc * w2[c, t]
            for t in range(h):
                x = g[t] if a[i, t] + r[j, t] > 0 else g[t] * leak
                s_a[i, t] += x
                s_r[j, t] += x


@njit(cache=True, nogil=True)
def pair_cmi_step(a: np.ndarray, r: np.ndarray, w2: np.ndarray, b2: np.ndarray, s: np.ndarray,
                  beta: float, eps: float, leak: float, s_a: np.ndarray, s_r: np.ndarray) -> float:
    """Î_β on all pairs (a[i], r[j]) and its gradient at the two first-layer halves.

    ``a`` (N, h) is the first layer on z_a with its bias, ``r`` (N, h) on z_r; ``w2``,
    ``b2`` the second layer; ``s`` (N,) int64 codes. Writes dÎ/da into ``s_a`` and
    dÎ/dr into ``s_r``; returns Î_β.
    """
    n = a.shape[0]
    p = np.empty((w2.shape[0], n, n), np.float32)
    _pair_logits(a, r, w2, b2, leak, p)
    _softmax_(p)
    value = _logit_grads(p, s, beta, eps)
    _pair_back(a, r, w2, p, leak, s_a, s_r)
    return value
