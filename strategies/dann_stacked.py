"""DANN's gradient for stacked runs (`strategies.stacked`): `strategies.dann.Dann.update`, run by run.

The same loss and gradient as the per-run hand-written step, with a leading run axis
(weights held transposed, ``(L, in, out)``): every product is a batched matmul over the
runs, and the first layer's forward and weight-gradient products share the batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from strategies.base import relu_backward_
from strategies.stacked import back, stacked_ce_grad, stacked_grads, stacked_linear

if TYPE_CHECKING:
    from strategies.base import Method
    from strategies.stacked import StackedBatch


def stacked_update(model: Method, s: dict[str, Tensor], g: dict[str, Tensor], batch: StackedBatch) -> None:
    """Write DANN's gradient for every run into ``g`` (λ from ``model.lam``, set by ``begin_epoch``).

    Parameters
    ----------
    model : Method
        A `strategies.dann.Dann` whose epoch hook has run.
    s, g : dict of str to Tensor
        Stacked state and the parameters' gradient buffers.
    batch : StackedBatch
        The step's rows.
    """
    h1 = stacked_linear(s, "features.0", batch.x).relu_()
    z = stacked_linear(s, "features.2", h1).relu_()
    hd = stacked_linear(s, "discriminator.0", z).relu_()
    d_logits = stacked_ce_grad(stacked_linear(s, "classifier", z), batch.y, batch.w)
    known = (batch.group >= 0).to(z.dtype)
    d_disc = stacked_ce_grad(stacked_linear(s, "discriminator.2", hd), batch.group.clamp(min=0),
                             known / known.sum().clamp(min=1))
    d_hd = relu_backward_(back(d_disc, s, "discriminator.2"), hd)
    # The reversal layer: the discriminator's gradient reaches z times -λ.
    d_z = back(d_logits, s, "classifier").add_(back(d_hd, s, "discriminator.0"), alpha=-model.lam)
    d_z = relu_backward_(d_z, z)
    d_h1 = relu_backward_(back(d_z, s, "features.2"), h1)
    for layer, d_out, inp in (("features.0", d_h1, batch.x), ("features.2", d_z, h1),
                              ("classifier", d_logits, z), ("discriminator.0", d_hd, z),
                              ("discriminator.2", d_disc, hd)):
        stacked_grads(g, layer, d_out, inp)
