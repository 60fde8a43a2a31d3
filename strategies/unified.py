r"""Unified: the paper's linear probe with weighted cross-entropy (paper §2).

:math:`f_\theta(\phi(x)) = W\phi(x) + b` trained with the inverse-class-frequency weighted
cross-entropy :math:`\mathcal{L}_{WCE}`. Trained on one site it is the paper's
*Individual* classifier; trained on all sites, *Unified*. Defaults and search space are
the paper's protocol (`MethodConfig`); the optimiser (Adam) is our choice, the paper
names none.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from strategies.base import Batch, Method, MethodConfig, TaskSpec, register, weighted_cross_entropy


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
