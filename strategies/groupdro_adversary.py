r"""GroupDRO's local adversary (Sagawa et al. 2019, Algorithm 1): per-group losses and q.

The pure pieces of `strategies.groupdro`'s objective: the per-group mean losses of a
batch, the exponentiated-gradient step of the group weights q on the groups present,
and the holder of q across a client's local steps.
"""

from __future__ import annotations

import torch
from torch import Tensor


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
