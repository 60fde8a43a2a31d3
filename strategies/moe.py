r"""MOE: one linear expert per training site, mixed by a softmax gate (paper Table 1).

:math:`f_{MOE}(x) = \sum_{e=1}^{E} \alpha_e(x)\, f^e_\theta(\phi(x))` with
:math:`\alpha(x) = \mathrm{softmax}(W\phi(x) + b)` and E = number of sites, "each expert
specialized in one domain" (paper §2, after Li et al. 2023, ref. [19]). Li et al.'s
GMoE routes tokens sparsely (top-k) inside ViT blocks; over frozen FM features the
paper's formula is a dense gate over linear probes, which is what this file implements.

Each expert outputs class probabilities :math:`\mathrm{softmax}(f^e(\phi(x)))`; the
prediction is their α-weighted mixture, and `MoE.forward` returns its logarithm — valid
logits for ``argmax`` and for cross-entropy, since ``log_softmax`` leaves normalised
log-probabilities unchanged. The loss is

.. math::
    \mathcal{L}_{WCE}(\log p_{mix}) + \lambda_{gate}\, CE(W\phi(x)+b,\ d)
    + \lambda_{expert}\, \mathcal{L}_{WCE}(f^{d}(\phi(x)))

The paper gives only the mixture term; the two supervised terms are ours and make the
"one expert per domain" reading concrete: the gate learns to route site *d* to expert
*d*, and expert *d* is trained on site *d*'s rows. MOE uses the site (``Batch.domain``)
whatever `MethodConfig.sensitive` says, since experts are per site.

Federated reading
-----------------
Each client holds one site, so client *k* alone supervises expert *k* and sends the gate
a single routing target. `MoEStrategy` aggregates so that expert *e* stays specialised
to site *e* (the training site with domain index *e*, ``plan.domains``):

* the gate (``router.weight``, ``router.bias``) — and every other array — is averaged
  over all replying clients weighted by their number of examples (FedAvg): the averaged
  gradients are those of the pooled routing problem, so the gate learns to tell the
  sites apart although no client sees two;
* expert *e*'s slice (``experts.weight[e]``, ``experts.bias[e]``) is taken from the
  client whose domain is *e* when it replied, and otherwise kept from the previous
  global model (the arrays the strategy sent in this round's `configure_train`). Other
  clients' copies of expert *e* — moved only through the mixture term, in proportion to
  the gate mass they send it — are discarded, so a site absent from a round keeps its
  expert exactly.

(A gate-mass-weighted FedAvg per expert would also keep experts specialised; taking the
owner's slice is the simpler rule, and the one the "one expert per domain" reading
implies.)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812

from strategies.base import Batch, Method, MethodConfig, TaskSpec, register, weighted_cross_entropy
from strategies.federated import FederationPlan, FedMammoStrategy, weighted_average

#: The arrays holding one slice per expert (expert *e* is index *e* of the first axis).
EXPERT_KEYS = ("experts.weight", "experts.bias")


@dataclass(frozen=True)
class MoEConfig(MethodConfig):
    """MOE hyperparameters.

    Attributes
    ----------
    lambda_gate : float
        λ_gate, weight of the gate's site-classification loss: 1.0, ours (the paper gives
        only the mixture formula, Table 1).
    lambda_expert : float
        λ_expert, weight of each expert's loss on its own site: 1.0, ours.

    Notes
    -----
    Batch size, learning rate, epochs and their search grid are the paper's protocol
    (`MethodConfig`); the λ are not searched, as the paper searches only those two.
    """

    lambda_gate: float = 1.0
    lambda_expert: float = 1.0


def mixture_log_probs(gate_log_probs: Tensor, expert_log_probs: Tensor) -> Tensor:
    r"""Log of the mixture :math:`\sum_e \alpha_e\, p_e`, computed in log space.

    Parameters
    ----------
    gate_log_probs : Tensor
        (n, E) :math:`\log \alpha_e(x)`.
    expert_log_probs : Tensor
        (n, E, C) each expert's class log-probabilities.

    Returns
    -------
    Tensor
        (n, C) log-probabilities of the mixture (``exp`` sums to 1 per row).
    """
    # logsumexp keeps rows where the gate is nearly one-hot from underflowing to -inf.
    return torch.logsumexp(gate_log_probs.unsqueeze(-1) + expert_log_probs, dim=1)


def own_expert(expert_logits: Tensor, domain: Tensor) -> Tensor:
    """Logits of expert ``domain[i]`` for each row ``i``: (n, E, C) -> (n, C)."""
    rows = torch.arange(expert_logits.shape[0], device=expert_logits.device)
    return expert_logits[rows, domain]


class LinearExperts(nn.Module):
    """E linear classifiers over the same features, held as one (E, C, d) weight.

    One tensor instead of E `nn.Linear` modules makes all experts a single matrix
    product (about 3x faster per step with 10 sites); expert *e* is ``weight[e]``,
    ``bias[e]``, which is also the slice the federated server aggregates per expert.
    """

    def __init__(self, n_experts: int, in_dim: int, n_classes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_experts, n_classes, in_dim))
        self.bias = nn.Parameter(torch.empty(n_experts, n_classes))
        # nn.Linear's default initialisation, expert by expert.
        bound = 1.0 / math.sqrt(in_dim)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        """Every expert's class logits, shape (n, E, C)."""
        n_experts, n_classes, in_dim = self.weight.shape
        flat = F.linear(x, self.weight.reshape(n_experts * n_classes, in_dim), self.bias.reshape(-1))
        return flat.view(-1, n_experts, n_classes)


def moe_aggregate(
    previous: dict[str, np.ndarray], arrays: Sequence[dict[str, np.ndarray]], domains: Sequence[int],
    weights: np.ndarray, expert_keys: Sequence[str] = EXPERT_KEYS,
) -> dict[str, np.ndarray]:
    """Per-expert aggregation: FedAvg for shared arrays, expert *e* from client *e*.

    Parameters
    ----------
    previous : dict
        The previous global model ``{name: array}`` (what the clients received).
    arrays : sequence of dict
        The replying clients' models, one per client.
    domains : sequence of int
        Each replying client's domain index (= the index of its own expert).
    weights : numpy.ndarray
        FedAvg weight of each replying client (its number of examples).
    expert_keys : sequence of str
        Arrays whose first axis indexes the experts.

    Returns
    -------
    dict
        The new global model: every non-expert array (the gate) is the weighted average;
        expert *e*'s slice of each expert array is client *e*'s when it replied, else
        ``previous``'s.

    Notes
    -----
    The paper's MOE (Table 1, after Li et al. 2023) has "each expert specialized in one
    domain"; with one site per client, only client *e* trains expert *e* on its own
    rows (the module docstring has the rule and why).
    """
    out = weighted_average(arrays, weights)
    for key in expert_keys:
        merged = np.array(previous[key], copy=True)
        for client, d in zip(arrays, domains, strict=True):
            merged[d] = client[key][d]
        out[key] = merged.astype(previous[key].dtype)
    return out


class MoEStrategy(FedMammoStrategy):
    """FedAvg for the gate, owner-takes-all for each expert (`moe_aggregate`).

    Parameters
    ----------
    plan : FederationPlan
        The federation; ``plan.domains`` maps each site to its expert.
    on_round_end : callable, optional
        Passed to `FedMammoStrategy`.
    """

    def __init__(self, plan: FederationPlan, on_round_end: Callable[[int], None] | None = None) -> None:
        super().__init__(plan, on_round_end)

    def aggregate_arrays(self, sites: list[str], arrays: list[dict[str, np.ndarray]],
                         weights: np.ndarray) -> dict[str, np.ndarray]:
        """Gate by FedAvg over the replying sites; expert *e* from site *e* or kept."""
        return moe_aggregate(self.sent_arrays, arrays, [self.plan.domains[s] for s in sites], weights)


@register("moe")
class MoE(Method):
    """Dense mixture of per-site linear experts over frozen FM features."""

    label: ClassVar[str] = "MOE"
    config_cls: ClassVar[type[MethodConfig]] = MoEConfig
    strategy_cls: ClassVar[type[FedMammoStrategy]] = MoEStrategy
    #: Gate and experts are one linear map: pooled grids train in lockstep
    #: (`strategies.lockstep_moe`).
    lockstep: ClassVar[str] = "moe"

    def __init__(self, spec: TaskSpec, config: MethodConfig) -> None:
        super().__init__(spec, config)
        self.router = nn.Linear(spec.in_dim, spec.n_domains)
        self.experts = LinearExperts(spec.n_domains, spec.in_dim, spec.n_classes)
        self.lambda_gate = getattr(config, "lambda_gate", MoEConfig.lambda_gate)
        self.lambda_expert = getattr(config, "lambda_expert", MoEConfig.lambda_expert)

    def linear_map(self) -> Tensor:
        """Gate then experts as one ``[weight | bias]`` matrix (E + E·C, d + 1), a copy."""
        w = torch.cat([self.router.weight, self.experts.weight.flatten(0, 1)])
        b = torch.cat([self.router.bias, self.experts.bias.flatten()])
        return torch.cat([w, b[:, None]], dim=1).detach().clone()

    def load_linear_map(self, wb: Tensor) -> None:
        """Write a `linear_map` matrix back into the gate and the experts."""
        e = self.spec.n_domains
        with torch.no_grad():
            self.router.weight.copy_(wb[:e, :-1])
            self.router.bias.copy_(wb[:e, -1])
            self.experts.weight.copy_(wb[e:, :-1].view_as(self.experts.weight))
            self.experts.bias.copy_(wb[e:, -1].view_as(self.experts.bias))

    def gate(self, x: Tensor) -> Tensor:
        """Gate probabilities α(x), shape (n, E)."""
        return torch.softmax(self.router(x), dim=1)

    def expert_logits(self, x: Tensor) -> Tensor:
        """Every expert's class logits, shape (n, E, C)."""
        return self.experts(x)

    def _mixture(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        gate_logits = self.router(x)
        expert_logits = self.expert_logits(x)
        log_mix = mixture_log_probs(F.log_softmax(gate_logits, dim=1), F.log_softmax(expert_logits, dim=2))
        return log_mix, gate_logits, expert_logits

    def forward(self, x: Tensor) -> Tensor:
        """Log-probabilities of the mixture, shape (n, C), usable as class logits."""
        return self._mixture(x)[0]

    def objective(self, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        """Mixture WCE + λ_gate · gate CE on the site + λ_expert · own-site expert WCE.

        Returns
        -------
        tuple
            The loss and logs: ``loss`` (total), ``mixture``, ``gate``, ``expert`` (the
            unweighted components) and ``gate_accuracy`` (share of rows routed to
            their own site's expert).
        """
        log_mix, gate_logits, expert_logits = self._mixture(batch.x)
        mixture = weighted_cross_entropy(log_mix, batch.y, self.class_weights)
        gate = F.cross_entropy(gate_logits, batch.domain)
        expert = weighted_cross_entropy(own_expert(expert_logits, batch.domain), batch.y, self.class_weights)
        loss = mixture + self.lambda_gate * gate + self.lambda_expert * expert
        routed = (gate_logits.detach().argmax(dim=1) == batch.domain).float().mean()
        return loss, {
            "loss": float(loss.detach()),
            "mixture": float(mixture.detach()),
            "gate": float(gate.detach()),
            "expert": float(expert.detach()),
            "gate_accuracy": float(routed),
        }
