r"""Unified: the paper's linear probe with weighted cross-entropy (paper §2).

:math:`f_\theta(\phi(x)) = W\phi(x) + b` trained with the inverse-class-frequency weighted
cross-entropy :math:`\mathcal{L}_{WCE}`. Trained on one site it is the paper's
*Individual* classifier; trained on all sites, *Unified*. Defaults and search space are
the paper's protocol (`MethodConfig`); the optimiser (Adam) is our choice, the paper
names none.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from strategies.base import (
    Batch,
    Method,
    MethodConfig,
    TaskSpec,
    grad_buffer,
    optimizer_step,
    register,
    softmax_cross_entropy,
    weighted_cross_entropy,
)


@dataclass(frozen=True)
class UnifiedConfig(MethodConfig):
    """The paper's probe protocol; no method-specific hyperparameters."""


@register("unified")
class Unified(Method):
    """Linear probe over frozen FM features."""

    label = "Unified"
    config_cls = UnifiedConfig
    #: The plain probe: grids train in lockstep (`strategies.lockstep`).
    lockstep = True

    def __init__(self, spec: TaskSpec, config: MethodConfig) -> None:
        super().__init__(spec, config)
        self.linear = nn.Linear(spec.in_dim, spec.n_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits."""
        return self.linear(x)

    def objective(self, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        """Weighted cross-entropy of the probe."""
        loss = weighted_cross_entropy(self(batch.x), batch.y, self.class_weights)
        return loss, {"loss": float(loss.detach())}

    def update(self, batch: Batch) -> dict[str, float]:
        r"""One optimiser step on `objective`, with its gradient written out by hand.

        With :math:`r_i = w_{y_i}/N` the gradient is :math:`G^\top [x, 1]` for
        :math:`G_i = r_i(\mathrm{softmax}(z_i) - e_{y_i})`. Both products are thin (a few
        classes) and go through numpy's BLAS, several times faster than torch's at these
        shapes on the CPUs we measured (see `strategies.lockstep`); autograd's bookkeeping
        would cost more than the arithmetic. A subclass that changes `objective` (FedProx)
        keeps autograd's path.
        """
        x = batch.x
        if type(self).objective is not Unified.objective or x.dtype != torch.float32 or not x.is_cpu:
            return super().update(batch)
        assert self.optimizer is not None, "call configure_optimizer first"
        lin = self.linear
        with torch.no_grad():
            xn = x.detach().numpy()
            logits = torch.from_numpy(xn @ lin.weight.detach().numpy().T).add_(lin.bias)
            row_weight = self.class_weights[batch.y] / len(batch.y)
            loss, d_logits = softmax_cross_entropy(logits, batch.y, row_weight)
            np.matmul(d_logits.numpy().T, xn, out=grad_buffer(lin.weight).numpy())
            torch.sum(d_logits, 0, out=grad_buffer(lin.bias))
        optimizer_step(self.optimizer)
        return {"loss": float(loss)}
