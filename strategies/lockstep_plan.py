"""An epoch's plan for `strategies.lockstep`: every step's rows and loss weights, made at once.

Also the per-step logit gradient of the objectives that are not the plain weighted
cross-entropy (GroupDRO's, MOE's), on the plan's views.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from strategies.lockstep_dro import DroState, dro_plan
from strategies.lockstep_moe import moe_grad, moe_plan

if TYPE_CHECKING:
    from strategies.lockstep import RunGroup


def epoch_plan(
    group: RunGroup, order: list[int], gens: list[torch.Generator], y: Tensor, nb_max: int,
) -> dict[str, Tensor]:
    """One epoch's gathered row indices and per-row loss weights, for every step at once.

    Returns
    -------
    dict of str to Tensor
        ``idx`` (steps, F·B) rows to gather; ``w`` (steps, F, 1, 1, B) each row's class
        weight over its batch's size (0 for padding); ``nyw`` (steps, F, C, 1, B) = −``w``
        times the one-hot label: the gradient of the loss w.r.t. the class-major logits
        (F, C, L, B) is ``softmax · w + nyw``. For GroupDRO also ``cwy`` (steps, F, B) the class
        weight alone, ``label`` (steps, F, B) and ``valid`` (steps, F, B); for MOE
        ``onehot`` (steps, F, B, 1, C), ``wr`` and ``dom``.
    """
    b, c = group.batch_size, group.class_weights.shape[1]
    idx = torch.zeros((len(order), nb_max * b), dtype=torch.int64)
    cwy, size = torch.zeros((len(order), nb_max * b)), torch.full((len(order), nb_max * b), float(b))
    for slot, f in enumerate(order):
        rows = torch.from_numpy(group.rows[f])
        n = rows.numel()
        idx[slot, :n] = rows[torch.randperm(n, generator=gens[f])]
        full = (math.ceil(n / b) - 1) * b
        size[slot, full:n] = float(n - full)  # the last, partial batch
        cwy[slot, :n] = group.class_weights[f][y[idx[slot, :n]]]
    shape = (len(order), nb_max, b)
    onehot = torch.nn.functional.one_hot(y[idx], c).float().reshape(*shape, 1, c).transpose(0, 1)
    w = (cwy / size).reshape(*shape).transpose(0, 1)[..., None, None]  # (steps, F, B, 1, 1)
    class_major = (0, 1, 4, 3, 2)
    plan = {"idx": idx.reshape(shape).transpose(0, 1).reshape(nb_max, -1).contiguous(),
            "w": w.permute(class_major).contiguous(), "nyw": (-w * onehot).permute(class_major).contiguous()}
    valid = (torch.arange(nb_max * b) < torch.tensor([len(group.rows[f]) for f in order])[:, None])
    if group.dro is not None:
        plan |= {"cwy": cwy.reshape(shape).transpose(0, 1).contiguous(),
                 "label": y[idx].reshape(shape).transpose(0, 1).contiguous(),
                 "valid": valid.reshape(shape).transpose(0, 1)}
    if group.moe is not None:
        inv = (valid / size).reshape(shape).transpose(0, 1)
        plan |= {"onehot": onehot.contiguous(), "wr": w[..., 0].contiguous(),
                 "dom": moe_plan(group.moe, plan["idx"].view(nb_max, len(order), b), inv).contiguous()}
    return plan


def objective_grad(plan: dict[str, Tensor], group: RunGroup, dro: DroState | None, z4: np.ndarray
                   ) -> Callable[[int, int], np.ndarray] | None:
    """The step ``(i, k) -> dZ`` (F, C·L, B) of GroupDRO's or MOE's objective; None for plain CE.

    ``z4`` is the class-major (F, C, L, B) buffer of products before the learning rates
    (run (f, l)'s logits are ``lrs[l] · z4[f, :, l]``), which GroupDRO's step takes as it
    is; MOE's takes the logits as (F, B, L, C).
    """
    f, b = z4.shape[0], z4.shape[-1]
    zv = z4.transpose(0, 3, 2, 1)

    if dro is not None:
        dro.epoch(plan["label"], plan["cwy"], *dro_plan(group.dro, plan["idx"].view(-1, f, b), plan["valid"]))
        dz = dro.buffer(z4.shape).reshape(f, -1, b)  # a view of what every step rewrites

        def dro_step(i: int, k: int) -> np.ndarray:
            dro.grad(z4, i, k)
            return dz

        return dro_step
    if group.moe is not None:
        steps = list(zip(*(plan[k].numpy() for k in ("onehot", "wr", "dom")), strict=True))
        lr_rows = np.asarray(group.lrs, dtype=np.float32).reshape(1, 1, -1, 1)

        def moe_step(i: int, k: int) -> np.ndarray:
            np.multiply(z4, lr_rows, out=z4)
            dz = moe_grad(group.moe, zv, *steps[i])
            return np.ascontiguousarray(dz.transpose(0, 3, 2, 1)).reshape(f, -1, b)

        return moe_step
    return None
