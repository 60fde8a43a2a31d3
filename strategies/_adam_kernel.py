r"""Adam (Kingma & Ba, 2015) on many parameter segments in one compiled loop, for stacked runs.

The lockstep engine (`strategies.lockstep_update`) and the stacked search runs
(`strategies.stacked`) keep every run's parameters, gradients and moments in flat
buffers; a *segment* is one contiguous stretch of them that shares a learning rate and a
step count (one run's slice of one parameter, or a whole buffer). Each step is
``torch.optim.Adam``'s, with L2 decay:

.. math::

    g \leftarrow g + \lambda p,\quad m \leftarrow m + (1-\beta_1)(g - m),\quad
    v \leftarrow \beta_2 v + (1-\beta_2) g^2,\quad
    p \leftarrow p - \frac{\eta}{1-\beta_1^t}\,\frac{m}{\sqrt{v}\,/\sqrt{1-\beta_2^t} + \epsilon}.

torch's fused CPU kernel divides twice per element (:math:`\sqrt{v}` by the bias
correction, then :math:`m` by the denominator), and on this machine those divisions, not
memory, set its pace. Here :math:`\sqrt{v}` is multiplied by the correction's reciprocal
instead: one division per element, the same update up to a rounding of the denominator.
Measured against ``torch._fused_adam_`` on one core: 0.51 vs 0.77 ns per parameter on a
lockstep search's 74 k parameters (cache-resident), 0.63 vs 0.71 on a stacked DANN's
1.6 M, where memory traffic takes over.

A module of its own, compiled on first use: processes that never train stacked runs (a
federated client) never load numba.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit


@njit(cache=True, nogil=True, boundscheck=False, error_model="numpy")
def adam_segments_(p: np.ndarray, g: np.ndarray, m: np.ndarray, v: np.ndarray, starts: np.ndarray,
                   lengths: np.ndarray, lrs: np.ndarray, counts: np.ndarray, active: np.ndarray,
                   beta1: float, beta2: float, eps: float, weight_decay: float) -> None:
    """One Adam step of the ``active`` segments of flat float32 buffers, in place.

    Parameters
    ----------
    p, g, m, v : np.ndarray
        (P,) float32 parameters, their gradient, first and second moments.
    starts, lengths : np.ndarray
        (S,) int64 offset and size of every segment in the buffers.
    lrs : np.ndarray
        (S,) float64 learning rate of every segment.
    counts : np.ndarray
        (S,) float64 steps taken by every segment; an active segment's advances by one.
    active : np.ndarray
        int64 indices of the segments that take this step (Adam leaves a parameter without
        a gradient alone, its step count included).
    beta1, beta2, eps, weight_decay : float
        Adam's coefficients; ``weight_decay`` is added to the gradient (L2, not AdamW).
    """
    c1 = np.float32(1.0 - beta1)
    b2 = np.float32(beta2)
    c2 = np.float32(1.0 - beta2)
    e = np.float32(eps)
    wd = np.float32(weight_decay)
    for s in active:
        counts[s] += 1.0
        t = counts[s]
        # Bias corrections in float64, then float32, as torch's kernel takes them.
        step = np.float32(lrs[s] / (1.0 - beta1**t))
        inv_bc2 = np.float32(1.0 / math.sqrt(1.0 - beta2**t))
        a, n = starts[s], lengths[s]
        _segment(p[a : a + n], g[a : a + n], m[a : a + n], v[a : a + n], step, inv_bc2, c1, b2, c2, e, wd)


@njit(cache=True, nogil=True, boundscheck=False, error_model="numpy", inline="always")
def _segment(p: np.ndarray, g: np.ndarray, m: np.ndarray, v: np.ndarray, step: np.float32,
             inv_bc2: np.float32, c1: np.float32, b2: np.float32, c2: np.float32, eps: np.float32,
             wd: np.float32) -> None:
    """The update of one contiguous segment (1-D views, so that the loop vectorises)."""
    for j in range(p.shape[0]):
        pj = p[j]
        gj = g[j] + wd * pj
        mj = m[j] + c1 * (gj - m[j])
        vj = b2 * v[j] + c2 * gj * gj
        m[j] = mj
        v[j] = vj
        p[j] = pj - step * mj / (np.sqrt(vj) * inv_bc2 + eps)
