"""The optimiser step of `strategies.lockstep`: one fused update for many stacked runs."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from strategies.base import MethodConfig

BETAS = (0.9, 0.999)
EPS = 1e-8


class StackedUpdate:
    """In-place Adam or SGD step on stacked parameters, one fused call for every run.

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
        self.g = torch.zeros_like(q)
        self.m, self.v = torch.zeros_like(q), torch.zeros_like(q)
        f = q.shape[0]
        # Per-fold views and step counts: a fold whose epoch has fewer batches sits out
        # the last step, so its Adam step count must lag exactly as in its own run. When
        # every fold takes every step (``in_step``), one whole tensor and one count serve
        # all: the fused kernel's cost per tensor and the count's increment are paid once.
        self.whole = in_step
        self.lists = ([[t] for t in (self.q, self.g, self.m, self.v)] if in_step
                      else [[t[i] for i in range(f)] for t in (self.q, self.g, self.m, self.v)])
        self.steps = [] if in_step else [torch.zeros((), dtype=torch.float32) for _ in range(f)]
        # The whole update counts its steps in Python and hands the kernel a fresh 0-d
        # tensor: half the cost of incrementing a count tensor in place.
        self.count = 0
        self.fused = hasattr(torch, "_fused_adam_")

    def __call__(self, k: int) -> None:
        """Update the first ``k`` folds (the ones active at this step)."""
        if self.kind == "sgd":
            self.q[:k].sub_(self.g[:k])
            return
        if self.whole:
            qs, gs, ms, vs = self.lists
            self.count += 1
            steps = [torch.scalar_tensor(float(self.count))]
        else:
            full = k == len(self.steps)
            qs, gs, ms, vs = self.lists if full else (lst[:k] for lst in self.lists)
            steps = self.steps if full else self.steps[:k]
            torch._foreach_add_(steps, 1.0)
        if self.fused:
            torch._fused_adam_(qs, gs, ms, vs, [], steps, lr=1.0, beta1=BETAS[0], beta2=BETAS[1],
                               weight_decay=0.0, eps=EPS, amsgrad=False, maximize=False)
            return
        for q, g, m, v, s in zip(qs, gs, ms, vs, steps, strict=True):
            t = float(s)
            m.lerp_(g, 1 - BETAS[0])
            v.mul_(BETAS[1]).addcmul_(g, g, value=1 - BETAS[1])
            denom = (v.sqrt() / math.sqrt(1 - BETAS[1] ** t)).add_(EPS)
            q.addcdiv_(m, denom, value=-1.0 / (1 - BETAS[0] ** t))
