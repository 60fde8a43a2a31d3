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

from strategies.fairdisco_grads import supcon_grad
from strategies.stacked import back, stacked_ce_grad, stacked_grads, stacked_linear

if TYPE_CHECKING:
    from strategies.base import Method
    from strategies.stacked import StackedBatch

#: Parameters without a gradient on a one-row batch (no contrastive term, as per run).
PROJECTION = ("projection.0.weight", "projection.0.bias", "projection.1.weight", "projection.1.bias",
              "projection.3.weight", "projection.3.bias")


def _contrastive(model: Method, s: dict[str, Tensor], g: dict[str, Tensor], h: Tensor, y: Tensor) -> Tensor:
    """β·SupCon's projection gradients into ``g``; returns its dL/dh (L, B, bottleneck).

    The BatchNorm and ReLU between the two products, both ways, are one compiled call
    each (`strategies._fairdisco_kernels`): as torch calls they were some twenty passes
    over (L, B, 512) tensors, a fifth of a batch-32 step.
    """
    from strategies._fairdisco_kernels import bn_relu_backward_, bn_relu_forward_

    c, bn = model.config, model.projection[1]
    xhat = stacked_linear(s, "projection.0", h)  # normalised in place below
    r, inv = torch.empty_like(xhat), torch.empty_like(s["projection.1.bias"])
    gamma, tracked = s["projection.1.weight"], s["projection.1.num_batches_tracked"]
    n = xhat.shape[1]
    m = bn.momentum if bn.momentum is not None else 1.0 / float(tracked.reshape(-1)[0] + 1)
    bn_relu_forward_(xhat.numpy(), gamma.numpy(), s["projection.1.bias"].numpy(), bn.eps, m, n / (n - 1),
                     s["projection.1.running_mean"].numpy(), s["projection.1.running_var"].numpy(),
                     inv.numpy(), r.numpy())
    tracked.add_(1)
    _, d_zp = supcon_grad(stacked_linear(s, "projection.3", r), y, c.temperature, c.beta)
    stacked_grads(g, "projection.3", d_zp, r)
    d_a1 = back(d_zp, s, "projection.3")  # dL/dr, turned into dL/da1 in place below
    bn_relu_backward_(d_a1.numpy(), r.numpy(), xhat.numpy(), inv.numpy(), gamma.numpy(),
                      g["projection.1.weight"].numpy(), g["projection.1.bias"].numpy())
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
    from strategies._fairdisco_kernels import attribute_grads_

    h = stacked_linear(s, "bottleneck", batch.x)
    d_label = stacked_ce_grad(stacked_linear(s, "classifier", h), batch.y, batch.w)
    known = (batch.group >= 0).to(h.dtype)
    row = known / known.sum().clamp(min=1)
    logits = stacked_linear(s, "attribute", h)
    # The attribute head's CE sees sg(h); only the confusion term reaches h.
    d_attr, d_conf = torch.empty_like(logits), torch.empty_like(logits)
    attribute_grads_(logits.numpy(), batch.group.clamp(min=0).numpy(), row.numpy(), model.config.alpha,
                     d_attr.numpy(), d_conf.numpy())
    stacked_grads(g, "classifier", d_label, h)
    stacked_grads(g, "attribute", d_attr, h)
    d_h = back(d_label, s, "classifier").add_(back(d_conf, s, "attribute"))
    skipped: tuple[str, ...] = PROJECTION
    if batch.x.shape[0] >= 2:  # BatchNorm cannot normalise one row; one row has no positive pair
        d_h.add_(_contrastive(model, s, g, h, batch.y))
        skipped = ()
    stacked_grads(g, "bottleneck", d_h, batch.x)
    return skipped
