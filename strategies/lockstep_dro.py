r"""GroupDRO's objective in lockstep (`strategies.lockstep`): per-run adversary weights q.

The per-config GroupDRO (`strategies.groupdro`) on a batch: per-row weighted CE
:math:`\ell_i = w_{y_i}\,\mathrm{CE}_i`, group means :math:`L_g` over known rows, one
exponentiated-gradient step of q on the present groups, loss :math:`\sum_g q_g L_g`.
Its gradient w.r.t. row *i*'s logits is :math:`q_{g_i} w_{y_i} / n_{g_i}\,(p_i - e_{y_i})`
(0 for unknown groups). Here every run keeps its own q (float64, as the method does),
and the group sums are batched matmuls with a per-step (F, B, G) matrix of
:math:`1/n_g` entries.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from strategies.base import Method, MethodConfig, TaskSpec
from strategies.core import ArrayData


@dataclass(frozen=True)
class DroSpec:
    """The groups of GroupDRO's adversary.

    Attributes
    ----------
    groups : Tensor
        (n,) int64 group code of every row (``-1`` unknown).
    n_groups : int
        Number of groups G.
    eta : float
        Step size of the exponentiated-gradient ascent.
    """

    groups: Tensor
    n_groups: int
    eta: float


def dro_plan(dro: DroSpec, idx: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Per-step group matrices of an epoch.

    Parameters
    ----------
    dro : DroSpec
        The groups.
    idx : Tensor
        (steps, F, B) gathered rows.
    valid : Tensor
        (steps, F, B) bool, False for padding.

    Returns
    -------
    tuple of Tensor
        ``gn`` (steps, F, B, G): row *i*'s ``1 / n_g`` in its known group's column;
        ``present`` (steps, F, 1, G): groups with a known row in the batch.
    """
    g = dro.groups[idx]
    known = (g >= 0) & valid
    onehot = torch.nn.functional.one_hot(g.clamp(min=0), dro.n_groups).float() * known[..., None]
    counts = onehot.sum(dim=2, keepdim=True)
    return onehot / counts.clamp(min=1.0), counts > 0


class DroState:
    """The adversary weights of every run and the step that turns logits into dZ."""

    def __init__(self, dro: DroSpec, f: int, lcount: int) -> None:
        self.eta = dro.eta
        self.q = torch.full((f, lcount, dro.n_groups), 1.0 / dro.n_groups, dtype=torch.float64)

    def grad(self, z: Tensor, onehot: Tensor, cwy: Tensor, gn: Tensor, present: Tensor, k: int) -> Tensor:
        """Logit gradient (F, B, L, C) of the robust loss; q moves for the first ``k`` (active) folds only.

        Parameters
        ----------
        z : Tensor
            (F, B, L, C) logits.
        onehot : Tensor
            (F, B, 1, C) one-hot labels.
        cwy : Tensor
            (F, B, 1) class weight of each row's label.
        gn, present : Tensor
            This step's `dro_plan` entries.
        k : int
            Active folds.
        """
        logp = torch.log_softmax(z, dim=-1)
        wce = cwy * -(logp * onehot).sum(-1)  # (F, B, L)
        losses = torch.bmm(wce.transpose(1, 2), gn)  # (F, L, G)
        step = torch.where(present, self.eta * losses.double(), torch.zeros((), dtype=torch.float64))
        q = torch.softmax(torch.log(self.q) + step, dim=-1)
        self.q[:k] = q[:k]
        rw = torch.bmm(gn, q.to(z.dtype).transpose(1, 2)) * cwy  # (F, B, L)
        return logp.exp_().sub_(onehot).mul_(rw[..., None])


def dro_spec(cls: type[Method], data: ArrayData, config: MethodConfig, spec: TaskSpec) -> DroSpec | None:
    """GroupDRO's groups when ``cls`` declares ``lockstep = "groupdro"``, else None."""
    if vars(cls).get("lockstep") != "groupdro":
        return None
    groups = torch.from_numpy(data.group_index(config.sensitive).astype(np.int64))
    if groups.numel() and int(groups.max()) >= spec.n_groups:
        raise ValueError(f"{config.sensitive} codes reach {int(groups.max())}; "
                         f"expected fewer than {spec.n_groups} groups")
    return DroSpec(groups, spec.n_groups, float(config.eta))
