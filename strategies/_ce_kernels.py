"""Compiled cross-entropy logit gradients for the engines that train many runs at once.

A lockstep step of a linear probe (`strategies.lockstep`) needs the gradient of a
weighted cross-entropy with respect to a few hundred logits (the stacked steps' own are
in `strategies._stacked_kernels`). As torch or numpy calls (scale, softmax, scatter,
multiply, add) that is four or five dispatches of a few microseconds each, about a
sixth of a batch-8 lockstep step on this machine; here it is one loop.

A module of its own, imported when such a run starts: numba is not loaded by processes
that never train one (federated clients, which load every method).
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True, boundscheck=False, error_model="numpy")
def ce_logit_grad_(z: np.ndarray, lrs: np.ndarray, w: np.ndarray, nyw: np.ndarray, dz: np.ndarray) -> None:
    """dLoss/dlogits of every lockstep run's weighted cross-entropy, written into ``dz``.

    Parameters
    ----------
    z : np.ndarray
        (F, C, L, B) float32 class-major products ``Q x`` of the step's rows (fold F, class
        C, learning rate L, row B), before the learning rate that turns them into logits.
    lrs : np.ndarray
        (L,) float32 learning rates: run (f, l)'s logits are ``lrs[l] · z[f, :, l]``.
    w : np.ndarray
        (F, 1, 1, B) float32 each row's class weight over its batch's size (0 for padding).
    nyw : np.ndarray
        (F, C, 1, B) float32 −``w`` times the row's one-hot label.
    dz : np.ndarray
        (F, C, L, B) float32 output: ``softmax(logits) · w + nyw`` over the classes.
    """
    n_folds, n_classes, n_lrs, n_rows = z.shape
    for f in range(n_folds):
        for j in range(n_lrs):
            lr = lrs[j]
            for b in range(n_rows):
                top = lr * z[f, 0, j, b]
                for c in range(1, n_classes):
                    top = max(top, lr * z[f, c, j, b])
                total = np.float32(0.0)
                for c in range(n_classes):
                    e = np.exp(lr * z[f, c, j, b] - top)
                    dz[f, c, j, b] = e
                    total += e
                scale = w[f, 0, 0, b] / total
                for c in range(n_classes):
                    dz[f, c, j, b] = dz[f, c, j, b] * scale + nyw[f, c, 0, b]


@njit(cache=True, nogil=True, boundscheck=False, error_model="numpy")
def softmax_rows_(logits: np.ndarray, out: np.ndarray) -> None:
    """Softmax over the last axis of (L, B, K) float32 ``logits``, into ``out``."""
    for r in range(logits.shape[0]):
        for b in range(logits.shape[1]):
            row, dst = logits[r, b], out[r, b]
            top = row.max()
            total = np.float32(0.0)
            for c in range(row.shape[0]):
                dst[c] = np.exp(row[c] - top)
                total += dst[c]
            dst /= total
