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
In the federated issue :math:`q` moves to the server and the groups are the sites: each
client reports its local loss, and the server updates its weights over sites either
multiplicatively (`update_group_weights`, the exponentiated-gradient step above with
one "batch" = one round) or by the AFL/DRFA projected ascent (Mohri et al. 2019; Deng
et al. 2020, MLOPTPSU/FedTorch ``drfa.py``) implemented by `drfa_step`:
:math:`\lambda \leftarrow \Pi_{\Delta,\ge\epsilon}(\lambda + \gamma\,\ell)`, starting from
sample-count proportions, with γ = 0.1 decayed ×0.9 per round and floor ε = 1e-3;
aggregation is then FedAvg weighted by the server's weights. `GroupWeights` is already a
separate state object with ``state_dict``/``load_state_dict`` so it can live there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812

from strategies.base import Batch, Method, MethodConfig, TaskSpec, register, weighted_cross_entropy

#: Smallest server weight in AFL/DRFA (FedTorch ``drfa.py`` clips at 1e-3).
SIMPLEX_FLOOR = 1e-3


@dataclass(frozen=True)
class GroupDROConfig(MethodConfig):
    """GroupDRO hyperparameters.

    Attributes
    ----------
    eta : float
        Step size of the exponentiated-gradient ascent on q: 0.01, the default of
        kohpangwei/group_DRO (``--robust_step_size``) and DomainBed (``groupdro_eta``).

    Notes
    -----
    Batch size, learning rate, epochs and their search grid are the paper's protocol
    (`MethodConfig`); the paper searches no GroupDRO-specific hyperparameter.
    """

    eta: float = 0.01


def per_group_losses(per_sample: Tensor, group: Tensor, n_groups: int) -> tuple[Tensor, Tensor]:
    """Mean per-sample loss of each group, ignoring rows with ``group == -1``.

    Parameters
    ----------
    per_sample : Tensor
        (n,) per-sample losses (differentiable).
    group : Tensor
        (n,) int64 group codes in ``[-1, n_groups)``.
    n_groups : int
        Number of groups G.

    Returns
    -------
    losses : Tensor
        (G,) mean loss per group; 0 for groups absent from the batch.
    present : Tensor
        (G,) bool, True where the group has at least one row.
    """
    known = (group >= 0).to(per_sample.dtype)
    # Unknown rows are routed to group 0 with weight 0, keeping one differentiable graph.
    index = group.clamp(min=0)
    sums = per_sample.new_zeros(n_groups).index_add(0, index, per_sample * known)
    counts = per_sample.new_zeros(n_groups).index_add(0, index, known)
    return sums / counts.clamp(min=1.0), counts > 0


def update_group_weights(q: Tensor, losses: Tensor, present: Tensor, eta: float) -> Tensor:
    r"""One exponentiated-gradient step :math:`q_g \propto q_g e^{\eta L_g}` on present groups.

    Parameters
    ----------
    q : Tensor
        (G,) current weights on the simplex (torch; any float dtype/device).
    losses : Tensor
        (G,) group losses; entries of absent groups are ignored. Treated as constants.
    present : Tensor
        (G,) bool mask of groups with data.
    eta : float
        Step size η.

    Returns
    -------
    Tensor
        New weights, summing to 1. Absent groups are multiplied by 1 before
        renormalising, so their ratios to each other are unchanged.

    Notes
    -----
    Computed as a softmax of :math:`\log q + \eta L` — the same quantity as Sagawa's
    Algorithm 1, without overflow when η·L is large (the server variant may use a
    larger step than 0.01).
    """
    step = torch.where(present, eta * losses.detach().to(q), torch.zeros_like(q))
    return torch.softmax(torch.log(q) + step, dim=0)


def project_to_simplex(v: np.ndarray, floor: float = SIMPLEX_FLOOR) -> np.ndarray:
    r"""Euclidean projection of ``v`` onto :math:`\{x : \sum_i x_i = 1,\ x_i \ge \epsilon\}`.

    Parameters
    ----------
    v : array_like
        (K,) vector to project.
    floor : float
        The floor ε; needs ``K * floor <= 1``.

    Returns
    -------
    numpy.ndarray
        float64 (K,) projection.

    Notes
    -----
    With :math:`y = x - \epsilon` the problem is the projection of :math:`v - \epsilon`
    onto the simplex of mass :math:`1 - K\epsilon`, solved exactly by the sort-based
    algorithm of Duchi et al. (2008, Fig. 1). FedTorch instead projects onto the plain
    simplex, clips to 1e-3 and renormalises, which can leave entries just below the
    floor; the two agree whenever no entry reaches the floor.
    """
    v = np.asarray(v, dtype=np.float64).ravel()
    mass = 1.0 - v.size * floor
    if mass < 0:
        raise ValueError(f"floor {floor} too large for {v.size} entries")
    return floor + _project_scaled_simplex(v - floor, mass)


def _project_scaled_simplex(v: np.ndarray, mass: float) -> np.ndarray:
    """Projection onto ``{x >= 0, sum x = mass}`` (Duchi et al. 2008)."""
    if mass == 0:
        return np.zeros_like(v)
    u = np.sort(v)[::-1]
    excess = np.cumsum(u) - mass
    k = np.arange(1, v.size + 1)
    rho = np.nonzero(u - excess / k > 0)[0][-1]
    return np.maximum(v - excess[rho] / (rho + 1), 0.0)


def drfa_step(lam: np.ndarray, losses: np.ndarray, gamma: float, floor: float = SIMPLEX_FLOOR) -> np.ndarray:
    r"""AFL/DRFA dual ascent: :math:`\lambda \leftarrow \Pi(\lambda + \gamma\,\ell)`, renormalised.

    Parameters
    ----------
    lam : array_like
        (K,) current server weights over clients (sites).
    losses : array_like
        (K,) losses reported by the clients.
    gamma : float
        Dual step size γ (0.1 decayed ×0.9 per round in DRFA).
    floor : float
        Smallest weight, so no site is ever dropped (1e-3 in FedTorch).

    Returns
    -------
    numpy.ndarray
        float64 (K,) weights on the simplex, each ≥ ``floor``.
    """
    lam = np.asarray(lam, dtype=np.float64) + gamma * np.asarray(losses, dtype=np.float64)
    projected = project_to_simplex(lam, floor)
    # The projection already sums to 1; dividing only removes rounding drift.
    return projected / projected.sum()


class GroupWeights:
    """The adversary's weights q over groups, kept apart from the model's parameters.

    Not an `nn.Module` buffer on purpose: the federated issue moves q to the server, and
    model state dicts exchanged there must hold only the probe's parameters.

    Parameters
    ----------
    n_groups : int
        Number of groups G; q starts uniform (kohpangwei/group_DRO, DomainBed).
    eta : float
        Step size η of `update_group_weights`.
    """

    def __init__(self, n_groups: int, eta: float) -> None:
        self.eta = eta
        self._q = torch.full((n_groups,), 1.0 / n_groups, dtype=torch.float64)

    @property
    def weights(self) -> Tensor:
        """Current weights (G,), float64, summing to 1."""
        return self._q

    def update(self, losses: Tensor, present_mask: Tensor) -> Tensor:
        """Take one ascent step with this batch's group losses; returns the new weights."""
        self._q = update_group_weights(self._q.to(losses.device), losses, present_mask, self.eta)
        return self._q

    def state_dict(self) -> dict[str, Tensor]:
        """Weights as ``{"q": tensor}`` (a copy on CPU)."""
        return {"q": self._q.detach().cpu().clone()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore weights saved by `state_dict`."""
        q = torch.as_tensor(state["q"], dtype=torch.float64)
        if q.shape != self._q.shape:
            raise ValueError(f"expected q of shape {tuple(self._q.shape)}, got {tuple(q.shape)}")
        self._q = q.clone()


@register("groupdro")
class GroupDRO(Method):
    """Linear probe trained on the exponentiated-gradient GroupDRO objective."""

    label: ClassVar[str] = "GroupDRO"
    config_cls: ClassVar[type[MethodConfig]] = GroupDROConfig

    def __init__(self, spec: TaskSpec, config: MethodConfig) -> None:
        super().__init__(spec, config)
        self.linear = nn.Linear(spec.in_dim, spec.n_classes)
        self.group_weights = GroupWeights(spec.n_groups, getattr(config, "eta", GroupDROConfig.eta))

    def forward(self, x: Tensor) -> Tensor:
        """Class logits of the probe."""
        return self.linear(x)

    def objective(self, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        r"""Robust loss :math:`\sum_g q_g L_g`; q steps first, only in training mode.

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
