r"""FedProx: the linear probe with a proximal term to the global model (Li et al. 2020).

Each client minimises its local objective plus a proximal term that keeps the local
model near the global one it received (Li et al., "Federated Optimization in
Heterogeneous Networks", MLSys 2020, Eq. (2)):

.. math::
    h_k(w; w^t) = \mathcal{L}_{WCE}(w) + \frac{\mu}{2}\,\lVert w - w^t \rVert^2

with :math:`\mathcal{L}_{WCE}` the paper's weighted cross-entropy (`strategies.unified`)
and :math:`w^t` every parameter of the probe (weight and bias) as loaded from the global
model, captured in `FedProx.begin_round` — after the global arrays are loaded, before
the first local step, as Flower's ``FedProx`` strategy documents. The term is added to
every minibatch loss. The norm is *squared*, as in the paper (Flower's docstring
example writes ``.norm(2)`` without the square; Flower's baselines square it).

μ = 0.01 by default: Flower's ``FedProx`` leaves ``proximal_mu`` to the user (default
0.0, i.e. FedAvg), and the paper searches μ ∈ {0.001, 0.01, 0.1, 1}, its best value
varying by dataset; 0.01 is our choice from that grid (a mild pull towards the global
model), not a value the paper prescribes for this task.

Pooled training never calls `begin_round`: there is no global model, the term is 0 and
the method is Unified. The server side is plain FedAvg (`FedMammoStrategy`): the client
reads μ from its method config, so no ``proximal-mu`` key is needed in the round config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from strategies.base import Batch, MethodConfig, TaskSpec, register, weighted_cross_entropy
from strategies.unified import Unified, UnifiedConfig


@dataclass(frozen=True)
class FedProxConfig(UnifiedConfig):
    """FedProx hyperparameters.

    Attributes
    ----------
    mu : float
        Weight μ of the proximal term: 0.01, from the paper's grid {0.001, 0.01, 0.1, 1}
        (Flower's ``FedProx`` has no default other than 0.0 = FedAvg). Not searched:
        the paper's protocol searches only batch size and learning rate.
    """

    mu: float = 0.01


def proximal_term(params: list[Tensor], anchor: list[Tensor] | None, mu: float) -> Tensor:
    r""":math:`\frac{\mu}{2}\sum_p \lVert p - p^t \rVert^2` over all parameters (Li et al. 2020).

    Parameters
    ----------
    params : list of Tensor
        The local parameters (differentiable).
    anchor : list of Tensor or None
        The global parameters :math:`p^t` in the same order; None (no global model,
        pooled training) gives 0.
    mu : float
        The weight μ.

    Returns
    -------
    Tensor
        Scalar term.
    """
    if anchor is None or mu == 0.0:
        return params[0].new_zeros(())
    return 0.5 * mu * sum(((p - a) ** 2).sum() for p, a in zip(params, anchor, strict=True))


@register("fedprox")
class FedProx(Unified):
    """Linear probe with weighted CE plus FedProx's proximal term to the global model."""

    label: ClassVar[str] = "FedProx"
    config_cls: ClassVar[type[MethodConfig]] = FedProxConfig

    def __init__(self, spec: TaskSpec, config: MethodConfig) -> None:
        super().__init__(spec, config)
        self.mu = getattr(config, "mu", FedProxConfig.mu)
        self.anchor: list[Tensor] | None = None

    def begin_round(self, config: dict[str, object]) -> None:
        """Capture the just-loaded global parameters :math:`w^t` (detached copies)."""
        with torch.no_grad():
            self.anchor = [p.detach().clone() for p in self.parameters()]

    def objective(self, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        """Weighted CE plus the proximal term.

        Returns
        -------
        tuple
            The loss and logs: ``loss`` (total), ``wce`` and ``prox`` (the two terms).
        """
        wce = weighted_cross_entropy(self(batch.x), batch.y, self.class_weights)
        prox = proximal_term(list(self.parameters()), self.anchor, self.mu)
        loss = wce + prox
        return loss, {"loss": float(loss.detach()), "wce": float(wce.detach()), "prox": float(prox.detach())}
