"""FairDisCO's compiled kernels: its supervised-contrastive step and its stacked step's heads.

`supcon_grad_` (`strategies.fairdisco_grads.supcon_grad`): normalising the projections,
their similarities, the loss against each anchor's negatives and the gradient back to
the projections, for every stacked run, in one call: torch needed some twenty-five calls
on (runs, n, n) tensors of a few hundred numbers, each paying its dispatch. For the
stacked step (`strategies.fairdisco_stacked`): the projection head's BatchNorm and ReLU,
forward and backward, and the attribute head's two logit gradients, where torch made some
twenty passes over (runs, n, 512) tensors. A module of its own, imported on first use:
numba is not loaded by processes that never train FairDisCO.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from strategies._ce_kernels import softmax_rows_


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
        # Each negative's exp(s_ij − top) is kept in g for its share below: exp and log
        # calls are most of this kernel's time.
        total = 0.0
        for j in range(n):
            if y[j] != y[i]:
                g[i, j] = np.exp(sim[i, j] - top)
                total += g[i, j]
        neg = top + np.log(total)
        slack = 0.0
        for j in range(n):
            if j != i and y[j] == y[i]:
                x = neg - sim[i, j]
                e = np.exp(-abs(x))
                loss += max(x, 0.0) + np.log1p(e)  # -log σ(-x), stable both ways
                # d/dx of that softplus: σ(x), from the same exp.
                share = (1.0 / (1.0 + e) if x >= 0.0 else e / (1.0 + e)) / n_pos
                g[i, j] = -share
                slack += share
        # n_i spreads each positive's pull over i's negatives by their softmax weights.
        for j in range(n):
            if y[j] != y[i]:
                g[i, j] *= slack / total
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


@njit(cache=True, nogil=True, boundscheck=False, error_model="numpy")
def bn_relu_forward_(a: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float, momentum: float,
                     unbias: float, run_mean: np.ndarray, run_var: np.ndarray, inv: np.ndarray,
                     r: np.ndarray) -> None:
    """BatchNorm in training mode then ReLU, for every run; ``a`` becomes the normalised batch.

    Parameters
    ----------
    a : np.ndarray
        (L, n, f) float32 pre-activations, n ≥ 2; overwritten with x̂ = (a − mean) · inv.
    gamma, beta : np.ndarray
        (L, f) the affine map of each run.
    eps, momentum, unbias : float
        BatchNorm's ε and running-statistics momentum, and n / (n − 1) for the running
        variance (unbiased, as torch keeps it; the batch is normalised by the biased one).
    run_mean, run_var : np.ndarray
        (L, f) running statistics, updated in place.
    inv : np.ndarray
        (L, f) output: 1 / sqrt(var + ε).
    r : np.ndarray
        (L, n, f) output: relu(γ x̂ + β).
    """
    n_runs, n, f = a.shape
    # float32 throughout, as torch computes the layer on float32 tensors.
    e, m, keep = np.float32(eps), np.float32(momentum), np.float32(1.0 - momentum)
    mu, zero, inv_n = np.float32(unbias * momentum), np.float32(0.0), np.float32(1.0 / n)
    mean, var = np.empty(f, np.float32), np.empty(f, np.float32)
    for run in range(n_runs):
        x, out, g, b, s = a[run], r[run], gamma[run], beta[run], inv[run]
        mean[:] = 0.0
        var[:] = 0.0
        for i in range(n):
            for j in range(f):
                mean[j] += x[i, j]
        for j in range(f):
            mean[j] *= inv_n
        for i in range(n):
            for j in range(f):
                x[i, j] -= mean[j]
                var[j] += x[i, j] * x[i, j]
        for j in range(f):
            var[j] *= inv_n
            s[j] = np.float32(1.0) / np.sqrt(var[j] + e)
            run_mean[run, j] = run_mean[run, j] * keep + mean[j] * m
            run_var[run, j] = run_var[run, j] * keep + var[j] * mu
        for i in range(n):
            for j in range(f):
                x[i, j] *= s[j]
                out[i, j] = max(x[i, j] * g[j] + b[j], zero)


@njit(cache=True, nogil=True, boundscheck=False, error_model="numpy")
def bn_relu_backward_(d: np.ndarray, r: np.ndarray, xhat: np.ndarray, inv: np.ndarray, gamma: np.ndarray,
                      d_gamma: np.ndarray, d_beta: np.ndarray) -> None:
    """Back through `bn_relu_forward_`: ``d`` (dLoss/dr, (L, n, f)) becomes dLoss/da in place.

    Writes the affine map's gradients into ``d_gamma`` and ``d_beta`` (L, f). With
    g = d · [r > 0] and ĝ = γ g: dLoss/da = (ĝ − mean(ĝ) − x̂ · mean(ĝ x̂)) · inv, the
    batch statistics' own gradient included.
    """
    n_runs, n, f = d.shape
    zero, inv_n = np.float32(0.0), np.float32(1.0 / n)
    shift, tilt = np.empty(f, np.float32), np.empty(f, np.float32)
    for run in range(n_runs):
        dr, x, g, dg, db, s = d[run], xhat[run], gamma[run], d_gamma[run], d_beta[run], inv[run]
        dg[:] = 0.0
        db[:] = 0.0
        for i in range(n):
            for j in range(f):
                dr[i, j] = dr[i, j] if r[run, i, j] > zero else zero
                db[j] += dr[i, j]
                dg[j] += dr[i, j] * x[i, j]
        for j in range(f):
            shift[j] = g[j] * db[j] * inv_n
            tilt[j] = g[j] * dg[j] * inv_n
        for i in range(n):
            for j in range(f):
                dr[i, j] = (dr[i, j] * g[j] - shift[j] - x[i, j] * tilt[j]) * s[j]


@njit(cache=True, nogil=True, boundscheck=False, error_model="numpy")
def attribute_grads_(logits: np.ndarray, target: np.ndarray, row: np.ndarray, alpha: float,
                     d_attr: np.ndarray, d_conf: np.ndarray) -> None:
    """The attribute head's two gradients for every run, from its (L, B, K) float32 logits.

    ``d_conf`` = α·row·(p − 1/K), the confusion term's (the only one reaching h);
    ``d_attr`` = row·(p − onehot(target)) + ``d_conf``, the head's whole logit gradient
    (its cross-entropy sees sg(h)). ``target`` (B,) int64, ``row`` (B,) float32.
    """
    softmax_rows_(logits, d_conf)
    k = logits.shape[2]
    uniform, a = np.float32(1.0 / k), np.float32(alpha)
    for run in range(logits.shape[0]):
        for b in range(logits.shape[1]):
            for c in range(k):
                p = d_conf[run, b, c]
                conf = (p - uniform) * (row[b] * a)
                d_conf[run, b, c] = conf
                hit = np.float32(1.0) if c == target[b] else np.float32(0.0)
                d_attr[run, b, c] = (p - hit) * row[b] + conf
