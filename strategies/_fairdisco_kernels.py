"""The compiled supervised-contrastive step of FairDisCO (`strategies.fairdisco_grads.supcon_grad`).

Normalising the projections, their similarities, the loss against each anchor's
negatives and the gradient back to the projections, for every stacked run, in one call:
torch needed some twenty-five calls on (runs, n, n) tensors of a few hundred numbers,
each paying its dispatch. A module of its own, imported on first use: numba is not
loaded by processes that never train FairDisCO.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _normalise(z: np.ndarray, zn: np.ndarray, norm: np.ndarray) -> None:
    """Rows of ``z`` over their L2 norm (at least 1e-12, as ``F.normalize``) into ``zn``."""
    for i in range(z.shape[0]):
        total = 0.0
        for t in range(z.shape[1]):
            total += z[i, t] * z[i, t]
        norm[i] = max(np.sqrt(total), 1e-12)
        for t in range(z.shape[1]):
            zn[i, t] = z[i, t] / norm[i]


@njit(cache=True, nogil=True, fastmath=True)
def _gram(zn: np.ndarray, temperature: float, sim: np.ndarray) -> None:
    """Cosine similarities over the temperature: ``zn zn^T / τ`` (fastmath: free to reassociate)."""
    for i in range(zn.shape[0]):
        for j in range(zn.shape[0]):
            dot = 0.0
            for t in range(zn.shape[1]):
                dot += zn[i, t] * zn[j, t]
            sim[i, j] = dot / temperature


@njit(cache=True, nogil=True, fastmath=True)
def _back(g: np.ndarray, zn: np.ndarray, norm: np.ndarray, scale: float, out: np.ndarray) -> None:
    """``out`` = d/dz of the normalisation applied to ``scale · (g + g^T) zn`` (dLoss/dzn)."""
    dz = np.empty(zn.shape[1])
    for i in range(zn.shape[0]):
        dz[:] = 0.0
        for j in range(zn.shape[0]):
            w = (g[i, j] + g[j, i]) * scale
            for t in range(zn.shape[1]):
                dz[t] += w * zn[j, t]
        radial = 0.0
        for t in range(zn.shape[1]):
            radial += zn[i, t] * dz[t]
        for t in range(zn.shape[1]):
            out[i, t] = (dz[t] - zn[i, t] * radial) / norm[i]


# Not fastmath: it tests for anchors without negatives with -inf.
@njit(cache=True, nogil=True)
def _anchor_grads(sim: np.ndarray, y: np.ndarray, n_pos: float, g: np.ndarray) -> float:
    """The loss: summed over positive pairs, divided by ``n_pos``; dLoss/dsim into ``g``.

    Per positive pair, ``-log σ(s_ij - n_i)`` with ``n_i`` the log-sum-exp of anchor i's
    negatives; an anchor without negatives scores its positives 0 with no gradient.
    """
    n = sim.shape[0]
    loss = 0.0
    for i in range(n):
        top = -np.inf
        for j in range(n):
            if y[j] != y[i]:
                top = max(top, sim[i, j])
        g[i, :] = 0.0
        if top == -np.inf:
            continue
        total = 0.0
        for j in range(n):
            if y[j] != y[i]:
                total += np.exp(sim[i, j] - top)
        neg = top + np.log(total)
        slack = 0.0
        for j in range(n):
            if j != i and y[j] == y[i]:
                x = neg - sim[i, j]
                softplus = max(x, 0.0) + np.log1p(np.exp(-abs(x)))  # -log σ, stable both ways
                loss += softplus
                share = (1.0 - np.exp(-softplus)) / n_pos
                g[i, j] = -share
                slack += share
        # n_i spreads each positive's pull over i's negatives by their softmax weights.
        for j in range(n):
            if y[j] != y[i]:
                g[i, j] = np.exp(sim[i, j] - neg) * slack
    return loss / n_pos


@njit(cache=True, nogil=True)
def supcon_grad_(zp: np.ndarray, y: np.ndarray, temperature: float, beta: float, d_zp: np.ndarray,
                 losses: np.ndarray) -> None:
    """SupCon of each run's projections ``zp`` (L, n, d) into ``losses`` (L,); β·dLoss/dzp into ``d_zp``."""
    runs, n, d = zp.shape
    n_pos = 0
    for i in range(n):
        for j in range(n):
            n_pos += i != j and y[i] == y[j]
    # float64 work arrays: a few thousand numbers, and the log-sum-exps keep their digits.
    zn, norm, sim, g = np.empty((n, d)), np.empty(n), np.empty((n, n)), np.empty((n, n))
    for r in range(runs):
        _normalise(zp[r], zn, norm)
        _gram(zn, temperature, sim)
        losses[r] = _anchor_grads(sim, y, max(n_pos, 1), g)
        _back(g, zn, norm, beta / temperature, d_zp[r])
