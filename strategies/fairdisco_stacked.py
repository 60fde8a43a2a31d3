"""FairDisCO's gradient for stacked runs (`strategies.stacked`): `FairDisCo.update`, run by run.

The same losses, gradients and BatchNorm statistics as the per-run hand-written step
(`strategies.fairdisco`; the BatchNorm and SupCon kernels of
`strategies._fairdisco_kernels` take the run axis as they are), with a leading run axis
(weights held transposed, ``(L, in, out)``). Every product is a batched matmul into the
step's own tensors (`strategies.stacked_layers`) and each piece between two products one
compiled pass; the runs share the batch, so the label masks of the
supervised-contrastive term are computed once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from strategies.stacked_layers import NO_EXTRA, Scratch, back_, linear_, product, scratch, weight_grads

if TYPE_CHECKING:
    from strategies.base import Method
    from strategies.stacked import StackedBatch

#: Parameters without a gradient on a one-row batch (no contrastive term, as per run).
PROJECTION = ("projection.0.weight", "projection.0.bias", "projection.1.weight", "projection.1.bias",
              "projection.3.weight", "projection.3.bias")


def _contrastive(model: Method, w: Scratch, g: dict[str, Tensor], y: Tensor) -> Tensor:
    """β·SupCon's projection gradients into ``g``; returns its dL/dh (L, B, bottleneck).

    The BatchNorm and ReLU between the two products, both ways, are one compiled call
    each (`strategies._fairdisco_kernels`): as torch calls they were some twenty passes
    over (L, B, 512) tensors, a fifth of a batch-32 step.
    """
    from strategies._fairdisco_kernels import bn_relu_backward_, bn_relu_forward_, supcon_grad_
    from strategies._stacked_kernels import back_sum_

    c, bn, s = model.config, model.projection[1], w.s
    xhat = linear_(w, "projection.0", w["h"], "xhat", relu=False)  # normalised in place below
    gamma, tracked = s["projection.1.weight"], s["projection.1.num_batches_tracked"]
    n = xhat.shape[1]
    m = bn.momentum if bn.momentum is not None else 1.0 / float(tracked.reshape(-1)[0] + 1)
    bn_relu_forward_(xhat.numpy(), gamma.numpy(), s["projection.1.bias"].numpy(), bn.eps, m, n / (n - 1),
                     s["projection.1.running_mean"].numpy(), s["projection.1.running_var"].numpy(),
                     w["inv"].numpy(), w["r"].numpy())
    tracked.numpy()[...] += 1
    zp, d_zp = linear_(w, "projection.3", w["r"], "zp", relu=False), w["d_zp"]
    supcon_grad_(zp.numpy(), y.numpy(), c.temperature, c.beta, d_zp.numpy(), w["losses"].numpy())
    back_sum_(d_zp.numpy(), NO_EXTRA, 0.0, d_zp.numpy(), g["projection.3.bias"].numpy(), False)
    d_a1 = back_(w, "projection.3", d_zp, "d_a1")  # dL/dr, turned into dL/da1 in place below
    bn_relu_backward_(d_a1.numpy(), w["r"].numpy(), xhat.numpy(), w["inv"].numpy(), gamma.numpy(),
                      g["projection.1.weight"].numpy(), g["projection.1.bias"].numpy())
    back_sum_(d_a1.numpy(), NO_EXTRA, 0.0, d_a1.numpy(), g["projection.0.bias"].numpy(), False)
    weight_grads(w, g, (("projection.3", "r", d_zp), ("projection.0", "h", d_a1)))
    return back_(w, "projection.0", d_a1, "d_proj")


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
    from strategies._stacked_kernels import back_sum_, ce_grad_bias_, site_rows_

    w = scratch(model, s, batch, _sizes(s))
    h = linear_(w, "bottleneck", w.shared(batch.x), "h", relu=False)
    lc, dc = product(w, "classifier", h, "lc"), w["dc"]
    ce_grad_bias_(lc.numpy(), s["classifier.bias"].numpy(), batch.y.numpy(), batch.w.numpy(), dc.numpy(),
                  g["classifier.bias"].numpy())
    site_rows_(batch.group.numpy(), w.row.numpy(), w.codes.numpy())
    # The attribute head's CE sees sg(h); only the confusion term reaches h.
    la, d_attr, d_conf = linear_(w, "attribute", h, "la", relu=False), w["d_attr"], w["d_conf"]
    attribute_grads_(la.numpy(), w.codes.numpy(), w.row.numpy(), model.config.alpha, d_attr.numpy(),
                     d_conf.numpy())
    back_sum_(d_attr.numpy(), NO_EXTRA, 0.0, d_attr.numpy(), g["attribute.bias"].numpy(), False)
    d_h = back_(w, "classifier", dc, "d_h")
    back_sum_(d_h.numpy(), back_(w, "attribute", d_conf, "d_rev").numpy(), 1.0, d_h.numpy(),
              g["bottleneck.bias"].numpy(), False)
    skipped: tuple[str, ...] = PROJECTION
    if batch.x.shape[0] >= 2:  # BatchNorm cannot normalise one row; one row has no positive pair
        back_sum_(d_h.numpy(), _contrastive(model, w, g, batch.y).numpy(), 1.0, d_h.numpy(),
                  g["bottleneck.bias"].numpy(), False)
        skipped = ()
    weight_grads(w, g, (("bottleneck", "x", d_h), ("classifier", "h", dc), ("attribute", "h", d_attr)),
                 batch.x)
    return skipped


def _sizes(s: dict[str, Tensor]) -> dict[str, int | tuple[int, ...]]:
    """The step's `Scratch` buffers: each (L, B, width), or (L, *shape) for a tuple."""
    hid, c = s["classifier.weight"].shape[1:]
    a, p, d = (s[f"{k}.weight"].shape[2] for k in ("attribute", "projection.0", "projection.3"))
    return {"h": hid, "d_h": hid, "d_rev": hid, "d_proj": hid, "lc": c, "dc": c, "la": a, "d_attr": a,
            "d_conf": a, "xhat": p, "r": p, "d_a1": p, "zp": d, "d_zp": d, "inv": (p,), "losses": ()}
