r"""GroupDRO's objective in lockstep (`strategies.lockstep`): per-run adversary weights q.

The per-config GroupDRO (`strategies.groupdro`) on a batch: per-row weighted CE
:math:`\ell_i = w_{y_i}\,\mathrm{CE}_i`, group means :math:`L_g` over known rows, one
exponentiated-gradient step of q on the present groups, loss :math:`\sum_g q_g L_g`.
Its gradient w.r.t. row *i*'s logits is :math:`q_{g_i} w_{y_i} / n_{g_i}\,(p_i - e_{y_i})`
(0 for unknown groups). Here every run keeps its own q (float64, as the method does),
and one compiled loop (numba) takes a step of all runs: the softmax and weighted CE of
each row, the group means, q's update and dZ.
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
    """Per-step groups of an epoch.

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
        ``group`` (steps, F, B) int64: each row's group, ``-1`` where unknown or padding;
        ``inv`` (steps, F, G) float32: ``1 / n_g`` with ``n_g`` the batch's known rows of
        group *g*, 0 for a group without any.
    """
    g = torch.where(valid, dro.groups[idx], -1)
    onehot = torch.nn.functional.one_hot(g.clamp(min=0), dro.n_groups).float() * (g >= 0)[..., None]
    counts = onehot.sum(dim=2)
    return g, torch.where(counts > 0, 1.0 / counts.clamp(min=1.0), 0.0)


class DroState:
    """The adversary weights of every run and the step that turns logits into dZ.

    A step's arrays are a few hundred numbers: as numpy or torch calls (about twenty) it
    cost some 30 µs of dispatch, more than the arithmetic; it is one compiled loop
    (`strategies._dro_kernels.dro_step`) here, in the engine's class-major layout (F, C, L, B).
    """

    def __init__(self, dro: DroSpec, f: int, lrs: tuple[float, ...]) -> None:
        self.eta, lcount = float(dro.eta), len(lrs)
        self.lrs = np.asarray(lrs, dtype=np.float32)
        # log q is what each step needs (q' = softmax(log q + step)); q's own log is kept.
        self.log_q = np.full((f, lcount, dro.n_groups), np.log(1.0 / dro.n_groups))
        self._steps: list[tuple[np.ndarray, ...]] = []
        self._dz = np.empty(0, np.float32)
        # Imported here: numba costs a process ~0.15 s to import, which a federated client
        # (a fresh process per message when deployed) never needs.
        from strategies._dro_kernels import dro_step

        self._kernel = dro_step

    def epoch(self, label: Tensor, cwy: Tensor, group: Tensor, inv: Tensor) -> None:
        """Take this epoch's per-step plan as numpy views, one tuple per step.

        ``label`` (S, F, B) int64, ``cwy`` (S, F, B) and `dro_plan`'s ``group`` and ``inv``.
        """
        self._steps = list(zip(label.numpy(), cwy.numpy(), group.numpy(), inv.numpy(), strict=True))

    def buffer(self, shape: tuple[int, ...]) -> np.ndarray:
        """The (F, C, L, B) float32 array `grad` writes into, made once per shape."""
        if self._dz.shape != shape:
            self._dz = np.empty(shape, np.float32)
        return self._dz

    def grad(self, z: np.ndarray, i: int, k: int) -> np.ndarray:
        """Logit gradient (F, C, L, B) of the robust loss at step ``i`` of the epoch.

        ``z`` is (F, C, L, B) products before the learning rates (run (f, l)'s logits are
        ``lrs[l] · z[f, :, l]``); q moves for the first ``k`` (active) folds only. The
        result is a buffer that the next step overwrites.
        """
        dz = self.buffer(z.shape)
        self._kernel(z, self.lrs, *self._steps[i], self.log_q, k, self.eta, dz)
        return dz


def dro_spec(cls: type[Method], data: ArrayData, config: MethodConfig, spec: TaskSpec) -> DroSpec | None:
    """GroupDRO's groups when ``cls`` declares ``lockstep = "groupdro"``, else None."""
    if vars(cls).get("lockstep") != "groupdro":
        return None
    groups = torch.from_numpy(data.group_index(config.sensitive).astype(np.int64))
    if groups.numel() and int(groups.max()) >= spec.n_groups:
        raise ValueError(f"{config.sensitive} codes reach {int(groups.max())}; "
                         f"expected fewer than {spec.n_groups} groups")
    return DroSpec(groups, spec.n_groups, float(config.eta))
