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
    """The adversary weights of every run and the step that turns logits into dZ.

    The step's arrays are a few thousand numbers, where each torch call costs several
    microseconds of dispatch: it runs in numpy on views of the epoch's plan (made once
    per epoch by `epoch`), as the lockstep engine's products do.
    """

    def __init__(self, dro: DroSpec, f: int, lcount: int) -> None:
        self.eta = dro.eta
        # log q is what each step needs (q' = softmax(log q + step)); q's own log is kept.
        self.log_q = np.full((f, lcount, dro.n_groups), np.log(1.0 / dro.n_groups))
        self._steps: list[tuple[np.ndarray, ...]] = []

    def epoch(self, onehot: Tensor, cwy: Tensor, gn: Tensor, present: Tensor) -> None:
        """Take this epoch's per-step plan as numpy views, one tuple per step.

        ``onehot`` (S, F, B, 1, C), ``cwy`` (S, F, B, 1), and `dro_plan`'s ``gn``
        (S, F, B, G) and ``present`` (S, F, 1, G).
        """
        ascent = present.double().mul_(self.eta).numpy()  # η on present groups, 0 elsewhere
        self._steps = list(zip(onehot.numpy(), cwy.numpy(), gn.numpy(), ascent, strict=True))

    def grad(self, z: np.ndarray, i: int, k: int) -> np.ndarray:
        """Logit gradient (F, B, L, C) of the robust loss at step ``i`` of the epoch.

        ``z`` is (F, B, L, C) logits; q moves for the first ``k`` (active) folds only.
        """
        onehot, cwy, gn, ascent = self._steps[i]
        top = z.max(-1, keepdims=True)
        e = np.exp(z - top)
        total = e.sum(-1, keepdims=True)
        # -log softmax at the label = log Σ exp + max − z_y
        wce = cwy * (np.log(total[..., 0]) + top[..., 0] - (z * onehot).sum(-1))  # (F, B, L)
        logits_q = self.log_q + np.matmul(wce.transpose(0, 2, 1), gn) * ascent  # (F, L, G), float64
        logits_q -= logits_q.max(-1, keepdims=True)
        q = np.exp(logits_q)
        q /= q.sum(-1, keepdims=True)
        self.log_q[:k] = np.log(q[:k])
        rw = np.matmul(gn, q.astype(np.float32).transpose(0, 2, 1)) * cwy  # (F, B, L)
        e /= total
        e -= onehot
        e *= rw[..., None]
        return e


def dro_spec(cls: type[Method], data: ArrayData, config: MethodConfig, spec: TaskSpec) -> DroSpec | None:
    """GroupDRO's groups when ``cls`` declares ``lockstep = "groupdro"``, else None."""
    if vars(cls).get("lockstep") != "groupdro":
        return None
    groups = torch.from_numpy(data.group_index(config.sensitive).astype(np.int64))
    if groups.numel() and int(groups.max()) >= spec.n_groups:
        raise ValueError(f"{config.sensitive} codes reach {int(groups.max())}; "
                         f"expected fewer than {spec.n_groups} groups")
    return DroSpec(groups, spec.n_groups, float(config.eta))
