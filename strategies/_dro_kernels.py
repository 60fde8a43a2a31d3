"""The compiled step of GroupDRO's lockstep objective (`strategies.lockstep_dro.DroState`).

A module of its own, imported when a lockstep GroupDRO run starts: numba is not loaded
by processes that never train one (federated clients, which load every method).
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True, boundscheck=False, error_model="numpy")
def _exp_group_sums(z: np.ndarray, lr: np.float32, label: np.ndarray, cwy: np.ndarray, group: np.ndarray,
                    f: int, j: int, dz: np.ndarray, inv_total: np.ndarray, sums: np.ndarray) -> None:
    """Run (f, j)'s rows: ``exp(logit - max)`` into ``dz``, ``1 / Σ exp`` into ``inv_total``.

    The logits are ``lr · z``; each known row's weighted CE goes into its group's sum
    (float64, as the method keeps it). float32 otherwise, as torch's cross-entropy.
    """
    sums[:] = 0.0
    for b in range(z.shape[3]):
        top = lr * z[f, 0, j, b]
        for c in range(1, z.shape[1]):
            top = max(top, lr * z[f, c, j, b])
        total = np.float32(0.0)
        for c in range(z.shape[1]):
            e = np.exp(lr * z[f, c, j, b] - top)
            dz[f, c, j, b] = e
            total += e
        inv_total[b] = np.float32(1.0) / total
        if group[f, b] >= 0:
            sums[group[f, b]] += cwy[f, b] * (np.log(total) + top - lr * z[f, label[f, b], j, b])


@njit(cache=True, nogil=True, boundscheck=False, error_model="numpy")
def _ascent(log_q: np.ndarray, f: int, lr: int, sums: np.ndarray, inv: np.ndarray, eta: float,
            move: bool, q: np.ndarray) -> None:
    """The adversary's step of run (f, lr): q' = softmax(log q + η L) into ``q``, kept if ``move``.

    L is the group mean ``sums · inv``: 0 for an absent group, whose q only renormalises.
    """
    top = -np.inf
    for g in range(q.shape[0]):
        q[g] = log_q[f, lr, g] + eta * (sums[g] * inv[f, g])
        top = max(top, q[g])
    total = 0.0
    for g in range(q.shape[0]):
        q[g] = np.exp(q[g] - top)
        total += q[g]
    for g in range(q.shape[0]):
        q[g] /= total
        if move:
            log_q[f, lr, g] = np.log(q[g])


@njit(cache=True, nogil=True, boundscheck=False, error_model="numpy")
def dro_step(z: np.ndarray, lrs: np.ndarray, label: np.ndarray, cwy: np.ndarray, group: np.ndarray,
             inv: np.ndarray, log_q: np.ndarray, k: int, eta: float, dz: np.ndarray) -> None:
    """One step of every run: update ``log_q`` (folds below ``k``) and write dZ into ``dz``.

    ``z``/``dz`` (F, C, L, B) float32, ``z`` the products before run (f, l)'s learning
    rate ``lrs[l]`` turns them into logits; ``label``, ``group`` (F, B) int64; ``cwy``
    (F, B) float32; ``inv`` (F, G) float32; ``log_q`` (F, L, G) float64. The softmax's
    normalisation waits for the weights: one multiply per logit, not a division and then
    a multiply; with the learning rates applied here, not in a numpy pass before, the
    call took 5.8 against 6.6 µs at batch 16 (the exp and log calls are most of it).
    """
    sums, q = np.empty(log_q.shape[2]), np.empty(log_q.shape[2])
    inv_total = np.empty(z.shape[3], np.float32)
    for f in range(z.shape[0]):
        for j in range(z.shape[2]):
            _exp_group_sums(z, lrs[j], label, cwy, group, f, j, dz, inv_total, sums)
            _ascent(log_q, f, j, sums, inv, eta, f < k, q)
            for b in range(z.shape[3]):  # dZ = q_g w_y / n_g (p − e_y)
                g = group[f, b]
                w = np.float32(q[g] * inv[f, g] * cwy[f, b]) if g >= 0 else np.float32(0.0)
                scale = w * inv_total[b]
                for c in range(z.shape[1]):
                    dz[f, c, j, b] *= scale
                dz[f, label[f, b], j, b] -= w
