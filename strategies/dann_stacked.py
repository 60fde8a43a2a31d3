"""DANN's gradient for stacked runs (`strategies.stacked`): `strategies.dann.Dann.update`, run by run.

The same loss and gradient as the per-run hand-written step, with a leading run axis
(weights held transposed, ``(L, in, out)``): every product is a batched matmul over the
runs into the step's own tensors (`strategies.stacked_layers`), the first layer's
forward and weight-gradient products sharing the batch, and each piece between two
products is one compiled pass (`strategies._stacked_kernels`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from strategies.stacked_layers import NO_EXTRA, back_, linear_, product, scratch, weight_grads

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
    from strategies._stacked_kernels import back_sum_, ce_grad_bias_, site_rows_

    (hid, c), d = s["classifier.weight"].shape[1:], s["discriminator.2.weight"].shape[2]
    w = scratch(model, s, batch, {"h1": hid, "z": hid, "hd": hid, "dh1": hid, "dz": hid, "dhd": hid,
                                  "rev": hid, "lc": c, "ld": d, "dc": c, "dd": d})
    h1 = linear_(w, "features.0", w.shared(batch.x), "h1", relu=True)
    z = linear_(w, "features.2", h1, "z", relu=True)
    hd = linear_(w, "discriminator.0", z, "hd", relu=True)
    lc, ld = product(w, "classifier", z, "lc"), product(w, "discriminator.2", hd, "ld")
    site_rows_(batch.group.numpy(), w.row.numpy(), w.codes.numpy())
    dc, dd = w["dc"], w["dd"]
    ce_grad_bias_(lc.numpy(), s["classifier.bias"].numpy(), batch.y.numpy(), batch.w.numpy(), dc.numpy(),
                  g["classifier.bias"].numpy())
    ce_grad_bias_(ld.numpy(), s["discriminator.2.bias"].numpy(), w.codes.numpy(), w.row.numpy(), dd.numpy(),
                  g["discriminator.2.bias"].numpy())
    d_hd = back_(w, "discriminator.2", dd, "dhd")
    back_sum_(d_hd.numpy(), NO_EXTRA, 0.0, hd.numpy(), g["discriminator.0.bias"].numpy(), True)
    # The reversal layer: the discriminator's gradient reaches z times -λ.
    d_z = back_(w, "classifier", dc, "dz")
    back_sum_(d_z.numpy(), back_(w, "discriminator.0", d_hd, "rev").numpy(), -model.lam, z.numpy(),
              g["features.2.bias"].numpy(), True)
    d_h1 = back_(w, "features.2", d_z, "dh1")
    back_sum_(d_h1.numpy(), NO_EXTRA, 0.0, h1.numpy(), g["features.0.bias"].numpy(), True)
    weight_grads(w, g, (("features.0", "x", d_h1), ("features.2", "h1", d_z), ("classifier", "z", dc),
                        ("discriminator.0", "z", d_hd), ("discriminator.2", "hd", dd)), batch.x)
