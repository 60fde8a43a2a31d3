"""Compiled elementwise kernels of the stacked steps (`strategies.stacked`), each one pass.

A stacked step of DANN or FairDisCO is a dozen small batched products with bias adds,
ReLUs, their backward passes, bias sums and head gradients between them. As torch calls
those were some thirty operations of a dozen kinds per step. On a 2-core VM each step's
Adam update streams several MB through the caches, so every kind of operation then
starts with its code and data cold: about 15–50 µs each, some 0.4 ms a step, more than
the products themselves at 512-wide features. Here each piece between two products is
one of these loops, on tensors the step owns (`strategies.stacked.scratch`).

Shapes: activations and their gradients are (L, B, n) float32 (run, row, unit); biases
and their gradients (L, n); per-row targets (B,) int64 and weights (B,) float32, shared
by the runs. A module of its own, imported on first use: numba is not loaded by
processes that never train a stacked run.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_OPTS = {"cache": True, "nogil": True, "boundscheck": False, "error_model": "numpy"}


@njit(**_OPTS)
def bias_act_(h: np.ndarray, b: np.ndarray, relu: bool) -> None:
    """``h += b`` for every run and row, then ``max(h, 0)`` when ``relu``; in place."""
    zero = np.float32(0.0)
    for r in range(h.shape[0]):
        br = b[r]
        for i in range(h.shape[1]):
            row = h[r, i]
            for j in range(row.shape[0]):
                v = row[j] + br[j]
                row[j] = max(v, zero) if relu else v


@njit(**_OPTS)
def site_rows_(group: np.ndarray, row: np.ndarray, codes: np.ndarray) -> None:
    """Each row's weight in a site/attribute loss and its class: known rows share 1, others get 0.

    ``row`` = [group ≥ 0] / max(#known, 1) and ``codes`` = max(group, 0), as the per-run
    steps compute them with torch (``known / known.sum().clamp(min=1)``).
    """
    known = 0
    for i in range(group.shape[0]):
        known += group[i] >= 0
    scale = np.float32(1.0) / np.float32(max(known, 1))
    for i in range(group.shape[0]):
        row[i] = scale if group[i] >= 0 else np.float32(0.0)
        codes[i] = max(group[i], 0)


@njit(**_OPTS)
def ce_grad_bias_(z: np.ndarray, b: np.ndarray, target: np.ndarray, w: np.ndarray, out: np.ndarray,
                  gb: np.ndarray) -> None:
    """Weighted cross-entropy's logit gradient, from products ``z`` before their bias ``b``.

    Adds ``b`` to ``z`` (the logits, in place); writes ``w_i (softmax(z_i) − onehot(t_i))``
    into ``out`` and its sum over the rows, the bias gradient, into ``gb``.
    """
    for r in range(z.shape[0]):
        gb[r] = 0.0
        for i in range(z.shape[1]):
            row, dst = z[r, i], out[r, i]
            top = -np.inf
            for c in range(row.shape[0]):
                row[c] += b[r, c]
                top = max(top, row[c])
            total = np.float32(0.0)
            for c in range(row.shape[0]):
                dst[c] = np.exp(row[c] - top)
                total += dst[c]
            for c in range(row.shape[0]):
                dst[c] /= total
            dst[target[i]] -= 1.0
            for c in range(row.shape[0]):
                dst[c] *= w[i]
                gb[r, c] += dst[c]


@njit(**_OPTS)
def back_sum_(d: np.ndarray, extra: np.ndarray, a: float, h: np.ndarray, gb: np.ndarray,
              relu: bool) -> None:
    """The gradient at a layer's output, completed in place, and its bias gradient.

    ``d += a · extra`` when ``extra`` is not empty (a second branch reaching the same
    output, DANN's reversed discriminator gradient), then ``d *= [h > 0]`` when ``relu``
    (``h`` the layer's ReLU output); ``gb`` gets the sum of ``d`` over the rows.
    """
    add, zero, a32 = extra.size > 0, np.float32(0.0), np.float32(a)
    for r in range(d.shape[0]):
        gb[r] = 0.0
        for i in range(d.shape[1]):
            row, hr = d[r, i], h[r, i]
            for j in range(row.shape[0]):
                v = row[j] + a32 * extra[r, i, j] if add else row[j]
                if relu and not hr[j] > zero:
                    v = zero
                row[j] = v
                gb[r, j] += v


@njit(**_OPTS)
def gather_rows_(x: np.ndarray, y: np.ndarray, w: np.ndarray, group: np.ndarray, idx: np.ndarray,
                 xo: np.ndarray, yo: np.ndarray, wo: np.ndarray, go: np.ndarray) -> None:
    """A minibatch's rows ``idx`` of features, labels, class weights and groups, into the ``*o`` arrays.

    ``wo`` gets each row's class weight over the batch size, as `strategies.core.fit_epochs`'
    weighted cross-entropy divides it.
    """
    n = idx.shape[0]
    for k in range(n):
        i = idx[k]
        xo[k] = x[i]
        yo[k] = y[i]
        wo[k] = w[i] / np.float32(n)
        go[k] = group[i]
