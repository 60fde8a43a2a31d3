"""The compiled step of GroupDRO's lockstep objective (`strategies.lockstep_dro.DroState`).

A module of its own, imported when a lockstep GroupDRO run starts: numba is not loaded
by processes that never train one (federated clients, which load every method).
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _softmax_group_sums(z: np.ndarray, label: np.ndarray, cwy: np.ndarray, group: np.ndarray, f: int,
                        lr: int, dz: np.ndarray, sums: np.ndarray) -> None:
    """Softmax of run (f, lr)'s rows into ``dz``; each known row's weighted CE into its group's sum."""
    sums[:] = 0.0
    for b in range(z.shape[3]):
        top = z[f, 0, lr, b]
        for c in range(1, z.shape[1]):
            top = max(top, z[f, c, lr, b])
        total = 0.0
        for c in range(z.shape[1]):
            e = np.exp(z[f, c, lr, b] - top)
            dz[f, c, lr, b] = e
            total += e
        for c in range(z.shape[1]):
            dz[f, c, lr, b] /= total
        if group[f, b] >= 0:
            sums[group[f, b]] += cwy[f, b] * (np.log(total) + top - z[f, label[f, b], lr, b])


@njit(cache=True, nogil=True)
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


@njit(cache=True, nogil=True)
def dro_step(z: np.ndarray, label: np.ndarray, cwy: np.ndarray, group: np.ndarray, inv: np.ndarray,
              log_q: np.ndarray, k: int, eta: float, dz: np.ndarray) -> None:
    """One step of every run: update ``log_q`` (folds below ``k``) and write dZ into ``dz``.

    ``z``/``dz`` (F, C, L, B) float32; ``label``, ``group`` (F, B) int64; ``cwy`` (F, B)
    float32; ``inv`` (F, G) float32; ``log_q`` (F, L, G) float64.
    """
    sums, q = np.empty(log_q.shape[2]), np.empty(log_q.shape[2])
    for f in range(z.shape[0]):
        for lr in range(z.shape[2]):
            _softmax_group_sums(z, label, cwy, group, f, lr, dz, sums)
            _ascent(log_q, f, lr, sums, inv, eta, f < k, q)
            for b in range(z.shape[3]):  # dZ = q_g w_y / n_g (p − e_y)
                g = group[f, b]
                w = q[g] * inv[f, g] * cwy[f, b] if g >= 0 else 0.0
                dz[f, label[f, b], lr, b] -= 1.0
                for c in range(z.shape[1]):
                    dz[f, c, lr, b] *= w
