r"""GroupDRO: minimise the worst group's risk over the sensitive attribute (paper Table 1).

:math:`\min_\theta \max_{q \in \Delta^{G}} \sum_g q_g \mathcal{L}_g(\theta)` with
:math:`\mathcal{L}_g` the paper's weighted cross-entropy averaged over the batch rows of
group *g* (Sagawa et al. 2019, ref. [28]). The inner maximisation is the online
exponentiated-gradient ascent of Sagawa's Algorithm 1, as in the reference code
(kohpangwei/group_DRO ``loss.py``) and DomainBed's ``GroupDRO``: on each batch

1. compute the per-group mean losses :math:`L_g` of the groups present in the batch;
2. :math:`q_g \leftarrow q_g \exp(\eta L_g)` (detached) for present groups, then
   renormalise :math:`q` over *all* groups;
3. minimise :math:`\sum_{g\ \mathrm{present}} q_g L_g`.

Step 3 follows kohpangwei/group_DRO, where an absent group's loss is 0: the present
weights are **not** renormalised among themselves, so a batch missing heavy groups has a
smaller effective step. DomainBed always sees every domain in a batch, so there the two
readings coincide. Groups are the site by default (the paper's domain) or ``density`` /
``age_band`` (`MethodConfig.sensitive`); rows with unknown attribute (``-1``) take no
part, so a batch without any known group gives no gradient.

Federated reading
-----------------
In the federated issue the adversary moves to the server and the groups are the
training sites (`GroupDROStrategy`): the server keeps weights :math:`\lambda` over
``plan.sites``, updates them each round from the clients' reports, and aggregates the
client models by FedAvg weighted by :math:`\lambda` (renormalised over the sites that
replied). ``GroupDROConfig.server_rule`` selects the server update:

* ``"drfa"`` (default) — the AFL/DRFA projected dual ascent (Mohri et al. 2019; Deng
  et al. 2020, MLOPTPSU/FedTorch ``drfa.py``), `drfa_step`:
  :math:`\lambda \leftarrow \Pi_{\Delta,\ge\epsilon}(\lambda + \gamma_t\,\ell)`, starting from
  sample-count proportions, :math:`\gamma_t = 0.1 \cdot 0.9^{t-1}`, floor ε = 1e-3;
* ``"eg"`` — the exponentiated-gradient step of Sagawa's Algorithm 1 with one round as
  one step, `eg_step`: :math:`\lambda_k \propto \lambda_k e^{\eta \ell_k}`, starting
  uniform (kohpangwei/group_DRO). Its default η = 0.01 is the reference *per-batch*
  step: per round it moves the weights by about η·(ℓ_k − ℓ̄), i.e. little; raise
  ``server_eta`` for a stronger adversary.

The loss :math:`\ell_k` is the client's ``global-loss``: the weighted CE, on site *k*'s
training rows, of the global model the client received. λ is the adversary of
:math:`\min_w \max_\lambda \sum_k \lambda_k F_k(w)`, whose λ-gradient is
:math:`F_k(w)` at the *shared* model (AFL; DRFA evaluates a snapshot of the shared
iterate), so every site is scored on the same model. ``train_loss`` (each site's own
model after its local update) would instead reward sites that fit themselves easily.
Timing: the losses of :math:`w^{t-1}` arrive with the round-*t* replies; λ steps on
them first and then weights the round-*t* average (simultaneous descent–ascent, as in
AFL), so round 1 already uses one step from the starting weights.

Sites that did not reply in a round keep their weight exactly: the update acts on the
replying sites only and redistributes their combined mass among them
(`server_weights_step`); with every site replying it is the plain step.

With ``sensitive="site"`` each client holds a single group, so its local q is trivial
(only its own group is present: the batch loss would be :math:`q_k L_k`, a rescaled
WCE that restarts each round because q is not exchanged). A federated client
(`GroupDRO.begin_round`) therefore minimises its plain local risk :math:`L_k` (the
weighted CE, as DRFA's clients do) and the server weights carry the worst-site
reweighting. With ``sensitive="density"``/``"age_band"`` the local q is meaningful and
stays: subgroups within the site are reweighted locally, sites on the server.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from flwr.app import MetricRecord
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812

from strategies.base import Batch, Method, MethodConfig, TaskSpec, register, weighted_cross_entropy
from strategies.federated import FederationPlan, FedMammoStrategy
from strategies.groupdro_adversary import GroupWeights, per_group_losses, update_group_weights  # noqa: F401
from strategies.reweighting import (  # noqa: F401 - re-exported: the method's math
    SIMPLEX_FLOOR,
    count_weights,
    drfa_gamma,
    drfa_step,
    eg_step,
    project_to_simplex,
    server_weights_step,
)

#: Federated server rules for the site weights (`GroupDROConfig.server_rule`).
SERVER_RULES = ("drfa", "eg")


@dataclass(frozen=True)
class GroupDROConfig(MethodConfig):
    """GroupDRO hyperparameters.

    Attributes
    ----------
    eta : float
        Step size of the exponentiated-gradient ascent on q: 0.01, the default of
        kohpangwei/group_DRO (``--robust_step_size``) and DomainBed (``groupdro_eta``).
    server_rule : str
        Federated server update of the site weights: ``"drfa"`` (AFL/DRFA projected
        ascent, the federated reference, MLOPTPSU/FedTorch ``drfa.py``) or ``"eg"``
        (exponentiated gradient, Sagawa's Algorithm 1 with one round as one step).
    server_eta : float
        η of the ``"eg"`` rule: 0.01, the reference per-batch step reused per round.
    server_gamma : float
        Initial γ of the ``"drfa"`` rule: 0.1 (FedTorch ``drfa.py``).
    server_gamma_decay : float
        Per-round factor on γ: 0.9 (FedTorch ``drfa.py``).

    Notes
    -----
    Batch size, learning rate, epochs and their search grid are the paper's protocol
    (`MethodConfig`); the paper searches no GroupDRO-specific hyperparameter.
    """

    eta: float = 0.01
    server_rule: str = "drfa"
    server_eta: float = 0.01
    server_gamma: float = 0.1
    server_gamma_decay: float = 0.9

    def __post_init__(self) -> None:
        if self.server_rule not in SERVER_RULES:
            raise ValueError(f"unknown server_rule {self.server_rule!r}; expected one of {SERVER_RULES}")


class GroupDROStrategy(FedMammoStrategy):
    """FedAvg weighted by the server's worst-site weights λ over the training sites.

    λ is updated in `observe_train` from each replying site's ``global-loss`` (the loss of
    the global model it received, see the module docstring) by ``server_rule`` — DRFA's
    projected ascent (start ∝ sample counts, taken from the first reports; a site not yet
    seen counts as the mean) or the exponentiated gradient (start uniform) — and then
    used, renormalised over the replying sites, as the aggregation weights of the same
    round. Non-replying sites keep their λ. λ is reported as ``site_weight`` history
    rows every round and checkpointed by `state_dict`.

    Parameters
    ----------
    plan : FederationPlan
        The federation; ``plan.settings.method_overrides`` fills `GroupDROConfig`.
    on_round_end : callable, optional
        Passed to `FedMammoStrategy`.
    """

    def __init__(self, plan: FederationPlan, on_round_end: Callable[[int], None] | None = None) -> None:
        super().__init__(plan, on_round_end)
        self.config: GroupDROConfig = self.method_config  # type: ignore[assignment]
        self.sites = plan.sites
        self.weights = np.full(len(self.sites), 1.0 / len(self.sites))
        self.started = False

    def _step(self, server_round: int) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        c = self.config
        if c.server_rule == "eg":
            return lambda lam, losses: eg_step(lam, losses, c.server_eta)
        gamma = drfa_gamma(server_round, c.server_gamma, c.server_gamma_decay)
        return lambda lam, losses: drfa_step(lam, losses, gamma, SIMPLEX_FLOOR, total=float(lam.sum()))

    def observe_train(self, server_round: int, sites: list[str], metrics: list[MetricRecord]) -> None:
        """Start λ on the first reports (DRFA), then step it on the replying sites' global-loss."""
        reported = {s: m for s, m in zip(sites, metrics, strict=True)}
        if not self.started:
            if self.config.server_rule == "drfa":
                counts = {s: float(m["num-examples"]) for s, m in reported.items()}
                mean = float(np.mean(list(counts.values())))
                self.weights = count_weights(np.array([counts.get(s, mean) for s in self.sites]))
            self.started = True
        present = np.array([s in reported for s in self.sites])
        losses = np.array([float(reported[s]["global-loss"]) if s in reported else 0.0 for s in self.sites])
        self.weights = server_weights_step(self.weights, present, losses, self._step(server_round))

    def aggregation_weights(self, sites: list[str], metrics: list[MetricRecord]) -> np.ndarray:
        """λ of the replying sites, renormalised among them."""
        w = np.array([self.weights[self.sites.index(s)] for s in sites])
        return w / w.sum()

    def round_rows(self, server_round: int) -> list[dict[str, object]]:
        """One ``site_weight`` row per training site (λ after this round's update)."""
        return [{"site": s, "metric": "site_weight", "value": float(w)}
                for s, w in zip(self.sites, self.weights, strict=True)]

    def state_dict(self) -> dict[str, object]:
        """λ (a list in ``sites`` order), the sites and whether it has started."""
        return {"sites": list(self.sites), "weights": [float(w) for w in self.weights],
                "started": self.started}

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore `state_dict` (the sites must match the plan's)."""
        if list(state["sites"]) != list(self.sites):
            raise ValueError(f"checkpoint sites {state['sites']} differ from the plan's {self.sites}")
        self.weights = np.asarray(state["weights"], dtype=np.float64)
        self.started = bool(state["started"])


@register("groupdro")
class GroupDRO(Method):
    """Linear probe trained on the exponentiated-gradient GroupDRO objective."""

    label: ClassVar[str] = "GroupDRO"
    config_cls: ClassVar[type[MethodConfig]] = GroupDROConfig
    strategy_cls: ClassVar[type[FedMammoStrategy]] = GroupDROStrategy
    #: Pooled grids train in lockstep on the robust objective (`strategies.lockstep_dro`).
    lockstep: ClassVar[str] = "groupdro"

    def __init__(self, spec: TaskSpec, config: MethodConfig) -> None:
        super().__init__(spec, config)
        self.linear = nn.Linear(spec.in_dim, spec.n_classes)
        self.group_weights = GroupWeights(spec.n_groups, getattr(config, "eta", GroupDROConfig.eta))
        #: True on a federated client whose groups are the sites: the server's λ does the
        #: worst-site reweighting and the local objective is the plain local risk.
        self.server_weighted = False

    def begin_round(self, config: dict[str, object]) -> None:
        """Federated client: with ``sensitive="site"`` it holds one group, so q is trivial."""
        self.server_weighted = self.config.sensitive == "site"

    def forward(self, x: Tensor) -> Tensor:
        """Class logits of the probe."""
        return self.linear(x)

    def objective(self, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        r"""Robust loss :math:`\sum_g q_g L_g`; q steps first, only in training mode.

        On a federated client with site groups (`begin_round`) the loss is the plain
        local risk :math:`L_k` (the weighted CE of its one site) and q does not move.

        Returns
        -------
        tuple
            The loss and logs: ``loss`` (robust), ``wce`` (plain weighted CE over all
            rows, Unified's objective), ``worst_group`` and ``mean_group`` (over the
            present groups; 0 when none).
        """
        logits = self(batch.x)
        per_sample = self.class_weights[batch.y] * F.cross_entropy(logits, batch.y, reduction="none")
        losses, present = per_group_losses(per_sample, batch.group, self.spec.n_groups)
        if self.server_weighted:
            loss = per_sample.mean()
        else:
            # Evaluation passes (no_grad or eval mode) must not move the adversary.
            q = self.group_weights.update(losses, present) if self.training else self.group_weights.weights
            loss = (q.to(losses) * losses).sum()
        shown = losses.detach()[present]
        return loss, {
            "loss": float(loss.detach()),
            "wce": float(weighted_cross_entropy(logits.detach(), batch.y, self.class_weights)),
            "worst_group": float(shown.max()) if shown.numel() else 0.0,
            "mean_group": float(shown.mean()) if shown.numel() else 0.0,
        }
