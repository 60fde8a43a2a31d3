"""FairDisCO's gradient for stacked runs (`strategies.stacked`): `FairDisCo.update`, run by run.

The same losses, gradients and BatchNorm statistics as the per-run hand-written step
(`strategies.fairdisco`; the BatchNorm and SupCon pieces of `strategies.fairdisco_grads`
take the run axis as they are), with a leading run axis (weights held transposed,
``(L, in, out)``); the runs share the batch, so the label masks of the
supervised-contrastive term are computed once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from strategies.base import relu_backward_
from strategies.fairdisco_grads import batch_norm_train, supcon_grad
from strategies.stacked import back, stacked_ce_grad, stacked_grads, stacked_linear

if TYPE_CHECKING:
    from strategies.base import Method
    from strategies.stacked import StackedBatch

#: BatchNorm's running statistics, stacked like the parameters.
RUNNING = ("running_mean", "running_var", "num_batches_tracked")
#: Parameters without a gradient on a one-row batch (no contrastive term, as per run).
PROJECTION = ("projection.0.weight", "projection.0.bias", "projection.1.weight", "projection.1.bias",
              "projection.3.weight", "projection.3.bias")


def _contrastive(model: Method, s: dict[str, Tensor], g: dict[str, Tensor], h: Tensor, y: Tensor) -> Tensor:
    """β·SupCon's projection gradients into ``g``; returns its dL/dh (L, B, bottleneck)."""
    c = model.config
    a1 = stacked_linear(s, "projection.0", h)
    xhat, inv = batch_norm_train(model.projection[1], a1, {k: s[f"projection.1.{k}"] for k in RUNNING})
    r = torch.addcmul(s["projection.1.bias"][:, None], xhat, s["projection.1.weight"][:, None]).relu_()
    _, d_zp = supcon_grad(stacked_linear(s, "projection.3", r), y, c.temperature, c.beta)
    stacked_grads(g, "projection.3", d_zp, r)
    d_bn = relu_backward_(back(d_zp, s, "projection.3"), r)
    torch.sum(d_bn * xhat, 1, out=g["projection.1.weight"])
    torch.sum(d_bn, 1, out=g["projection.1.bias"])
    d_xhat = d_bn * s["projection.1.weight"][:, None]
    d_a1 = (d_xhat - d_xhat.mean(1, keepdim=True) - xhat * (d_xhat * xhat).mean(1, keepdim=True)) * inv
    stacked_grads(g, "projection.0", d_a1, h)
    return back(d_a1, s, "projection.0")


def stacked_update(model: Method, s: dict[str, Tensor], g: dict[str, Tensor], batch: StackedBatch
                   ) -> tuple[str, ...]:
    """Write FairDisCO's gradient for every run into ``g``; returns the parameters left without one.

    Parameters
    ----------
    model : Method
        A `strategies.fairdisco.FairDisCo` (its config and BatchNorm settings).
    s, g : dict of str to Tensor
        Stacked state (BatchNorm's running statistics are updated here) and gradients.
    batch : StackedBatch
        The step's rows.
    """
    alpha, k = model.config.alpha, model.attribute.out_features
    h = stacked_linear(s, "bottleneck", batch.x)
    d_label = stacked_ce_grad(stacked_linear(s, "classifier", h), batch.y, batch.w)
    known = (batch.group >= 0).to(h.dtype)
    row = known / known.sum().clamp(min=1)
    log_p = torch.log_softmax(stacked_linear(s, "attribute", h), dim=-1)
    # The attribute head's CE sees sg(h); only the confusion term reaches h.
    d_attr = stacked_ce_grad(log_p, batch.group.clamp(min=0), row)
    d_conf = (log_p.exp_() - 1.0 / k).mul_(row[None, :, None] * alpha)
    stacked_grads(g, "classifier", d_label, h)
    stacked_grads(g, "attribute", d_attr.add_(d_conf), h)
    d_h = back(d_label, s, "classifier").add_(back(d_conf, s, "attribute"))
    skipped: tuple[str, ...] = PROJECTION
    if batch.x.shape[0] >= 2:  # BatchNorm cannot normalise one row; one row has no positive pair
        d_h.add_(_contrastive(model, s, g, h, batch.y))
        skipped = ()
    stacked_grads(g, "bottleneck", d_h, batch.x)
    return skipped
