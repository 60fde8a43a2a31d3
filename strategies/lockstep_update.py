"""The optimiser steps of stacked runs: one compiled Adam call (or one SGD op) for every run.

`SegmentAdam` serves both engines that train many runs at once: the lockstep linear
probes (`strategies.lockstep`, through `StackedUpdate`) and the stacked search runs of
methods with a hand-written step (`strategies.stacked`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from strategies.base import MethodConfig

BETAS = (0.9, 0.999)
EPS = 1e-8


class SegmentAdam:
    """``torch.optim.Adam`` on contiguous segments of one flat buffer, each with its own rate and count.

    One call of `strategies._adam_kernel.adam_segments_` updates every active segment:
    the same update as torch's fused Adam up to float rounding, with one division per
    element where torch's has two (1.1–1.5× faster on this machine; see that module).

    Parameters
    ----------
    p : Tensor
        Contiguous float32 CPU parameters, updated in place; their gradient (`g`, filled
        by the caller before each step) and moments are created here, zero.
    segments : sequence of (start, length, lr)
        Stretches of ``p.view(-1)`` sharing a learning rate and a step count, e.g. one
        run's slice of one parameter.
    weight_decay : float
        L2 decay added to the gradient, as ``Adam(weight_decay=...)``.
    """

    def __init__(self, p: Tensor, segments: Sequence[tuple[int, int, float]],
                 weight_decay: float = 0.0) -> None:
        if p.dtype != torch.float32 or p.device.type != "cpu" or not p.is_contiguous():
            raise ValueError(f"SegmentAdam needs contiguous float32 CPU parameters, got {p.dtype} on "
                             f"{p.device} (contiguous: {p.is_contiguous()})")
        starts, lengths, lrs = (np.asarray(c) for c in zip(*segments, strict=True))
        if starts.min() < 0 or (starts + lengths).max() > p.numel():
            raise ValueError(f"segments reach past the {p.numel()} parameters")
        self.p, self.g = p, torch.zeros_like(p)
        self._segments = starts.astype(np.int64), lengths.astype(np.int64), lrs.astype(np.float64)
        self.counts = np.zeros(len(starts))
        #: Every segment's index: the ``active`` of a step that moves them all.
        self.every = np.arange(len(starts))
        moments = torch.zeros_like(p), torch.zeros_like(p)
        self._buffers = tuple(t.view(-1).numpy() for t in (p, self.g, *moments))
        self.weight_decay = float(weight_decay)
        # Imported here: numba costs a process ~0.15 s to import, which a federated client
        # (a fresh process per message when deployed) never needs.
        from strategies._adam_kernel import adam_segments_

        self._kernel = adam_segments_

    def step(self, active: np.ndarray | None = None) -> None:
        """Update the segments indexed by ``active`` (int64; all of them when None)."""
        self._kernel(*self._buffers, *self._segments, self.counts, self.every if active is None else active,
                     BETAS[0], BETAS[1], EPS, self.weight_decay)


class StackedUpdate:
    """In-place Adam or SGD step on stacked parameters, one call for every run.

    ``q`` is (F, ...): one slice per fold. The learning rate is 1: `strategies.lockstep`
    folds each run's rate into its parameterisation. ``g`` is the gradient buffer the
    caller fills before each call. ``in_step`` promises that every fold takes every step
    (its epochs have equal batch counts): then every call updates all folds at once.
    """

    def __init__(self, q: Tensor, config: MethodConfig, in_step: bool = False) -> None:
        self.kind = config.optimizer
        if self.kind not in ("adam", "sgd"):
            raise ValueError(f"unknown optimizer {config.optimizer!r}; expected 'adam' or 'sgd'")
        self.q = q
        if self.kind == "sgd":
            self.g = torch.zeros_like(q)
            return
        # One segment per fold: a fold whose epoch has fewer batches sits out the last
        # step, so its Adam step count must lag exactly as in its own run. When every fold
        # takes every step, one segment serves all.
        f, per = q.shape[0], q[0].numel()
        segments = [(0, q.numel(), 1.0)] if in_step else [(i * per, per, 1.0) for i in range(f)]
        self.adam = SegmentAdam(q, segments)
        self.g = self.adam.g
        # The segments of the first k folds, for each k (a whole-buffer segment: always it).
        self.firsts = [self.adam.every if in_step else self.adam.every[:k] for k in range(f + 1)]

    def __call__(self, k: int) -> None:
        """Update the first ``k`` folds (the ones active at this step)."""
        if self.kind == "sgd":
            self.q[:k].sub_(self.g[:k])
        else:
            self.adam.step(self.firsts[k])
