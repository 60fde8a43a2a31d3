"""DANN's gradient for stacked runs (`strategies.stacked`): `strategies.dann.Dann.update`, run by run.

The same loss and gradient as the per-run hand-written step, with a leading run axis
(weights held transposed, ``(L, in, out)``): every product is a batched matmul over the
runs, and the first layer's forward and weight-gradient products share the batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from strategies.base import relu_backward_

if TYPE_CHECKING:
    from strategies.base import Method
    from strategies.stacked import StackedBatch


def stacked_linear(s: dict[str, Tensor], layer: str, inp: Tensor) -> Tensor:
    """``inp @ W.T + b`` for every run: (B, in) or (L, B, in) → (L, B, out)."""
    return torch.matmul(inp, s[f"{layer}.weight"]).add_(s[f"{layer}.bias"][:, None])


def stacked_grads(g: dict[str, Tensor], layer: str, d_out: Tensor, inp: Tensor) -> None:
    """Write a stacked layer's weight (in, out) and bias gradients from dL/d(output) and its input."""
    if inp.dim() == 2:  # the batch itself, shared by the runs
        inp = inp.expand(d_out.shape[0], *inp.shape)
    torch.bmm(inp.transpose(1, 2), d_out, out=g[f"{layer}.weight"])
    torch.sum(d_out, 1, out=g[f"{layer}.bias"])


def stacked_ce_grad(logits: Tensor, target: Tensor, row_weight: Tensor) -> Tensor:
    """Gradient of Σ_i r_i CE(z_i, t_i) w.r.t. logits (L, B, K): r_i (softmax − onehot); t, r are (B,)."""
    p = torch.softmax(logits, dim=-1)
    t = target[None, :, None].expand(p.shape[0], -1, 1)
    p.scatter_add_(-1, t, torch.full(t.shape, -1.0))
    return p.mul_(row_weight[None, :, None])


def back(d_out: Tensor, s: dict[str, Tensor], layer: str) -> Tensor:
    """dL/d(input) of a stacked layer: ``d_out @ W`` with W held (in, out)."""
    return torch.matmul(d_out, s[f"{layer}.weight"].transpose(1, 2))


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
