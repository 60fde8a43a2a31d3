r"""FADES' update with its gradient written out by hand (`strategies.fades.Fades.update`).

The same two steps as autograd on `Fades.terms` / `Fades.discriminator_loss` (tested
step by step to float round-off, same random draws in the same order): the main step
on encoder, decoder and heads, then the TC discriminator's. At batch 32 autograd's
graph over some 40 small layers and fresh gradient tensors cost about as much as the
arithmetic. The fairness term (the heads on all :math:`N^2` latent pairs) has its own
hand-written gradient, `strategies.fades_cmi.pair_cmi_grad`.

Every MLP here is Linear, LeakyReLU(`LEAK`), ..., Linear, so one forward that keeps each
layer's input and pre-activation, and one backward over them, serve them all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812

from strategies.base import Batch, linear_grads, optimizer_step, softmax_cross_entropy
from strategies.fades_cmi import LEAK, pair_cmi_grad

if TYPE_CHECKING:
    from strategies.fades import Fades

#: The model's MLPs, by attribute name.
_NETS = ("encoder", "decoder", "head_y", "head_s", "discriminator")
#: (output, each Linear's input, each hidden pre-activation) of `mlp_forward`.
Trace = tuple[Tensor, list[Tensor], list[Tensor]]


def permute_blocks(blocks: list[Tensor]) -> Tensor:
    """Concatenate ``blocks`` after shuffling each over the batch independently (FactorVAE)."""
    return torch.cat([b[torch.randperm(b.shape[0], device=b.device)] for b in blocks], dim=-1)


def linears(mlp: nn.Module) -> list[nn.Linear]:
    """The Linear layers of an MLP, in order (a LeakyReLU(`LEAK`) between consecutive ones)."""
    return [m for m in mlp.modules() if isinstance(m, nn.Linear)]


def mlp_forward(layers: list[nn.Linear], x: Tensor) -> Trace:
    """Run the MLP of ``layers`` on ``x``, keeping what its backward needs."""
    inputs, pres = [x], []
    h = torch.addmm(layers[0].bias, x, layers[0].weight.T)
    for layer in layers[1:]:
        pres.append(h)
        inputs.append(F.leaky_relu(h, LEAK))
        h = torch.addmm(layer.bias, inputs[-1], layer.weight.T)
    return h, inputs, pres


def mlp_backward(layers: list[nn.Linear], d_out: Tensor, trace: Trace, weights: bool = True,
                 d_input: bool = True) -> Tensor | None:
    """Backpropagate ``d_out`` through a `mlp_forward` trace.

    Writes every layer's weight and bias gradient when ``weights``; returns dL/d(input)
    when ``d_input`` (else None, saving the first layer's input product).
    """
    _, inputs, pres = trace
    d = d_out
    for k in range(len(layers) - 1, -1, -1):
        if weights:
            linear_grads(layers[k], d, inputs[k])
        if k == 0 and not d_input:
            return None
        d = d @ layers[k].weight
        if k:
            d = torch.ops.aten.leaky_relu_backward(d, pres[k - 1], LEAK, False)
    return d


def _cat(traces: tuple[Trace, Trace]) -> Trace:
    """Two traces of the same MLP as one over their stacked rows (rows are independent)."""
    (a, ia, pa), (b, ib, pb) = traces
    return (torch.cat([a, b]), [torch.cat(p) for p in zip(ia, ib, strict=True)],
            [torch.cat(p) for p in zip(pa, pb, strict=True)])


def manual_update(model: Fades, batch: Batch) -> dict[str, float]:
    """One main step and one discriminator step of ``model`` on ``batch``; returns the logs.

    Parameters
    ----------
    model : Fades
        A model on the CPU in float32, its optimizers configured, in training mode.
    batch : Batch
        The minibatch.

    Returns
    -------
    dict of str to float
        As `Fades.update`: ``loss``, every term of `Fades.terms`, and ``disc``.
    """
    nets = {name: linears(getattr(model, name)) for name in _NETS}  # once per step, not per use
    with torch.no_grad():
        terms, (d_enc, enc), tc = _main_gradients(model, nets, batch)
        mlp_backward(nets["encoder"], d_enc, enc, d_input=False)
    optimizer_step(model.optimizer)
    with torch.no_grad():
        disc = _discriminator_gradients(nets["discriminator"], tc)
    optimizer_step(model.disc_optimizer)
    logs = {k: float(v) for k, v in terms.items()}
    return {"loss": float(model.combine(terms)), **logs, "disc": float(disc)}


def _main_gradients(
    model: Fades, nets: dict[str, list[nn.Linear]], batch: Batch,
) -> tuple[dict[str, Tensor], tuple[Tensor, Trace], Trace]:
    """The terms of `Fades.terms`; writes the decoder's and heads' gradients.

    Returns the terms, dL/d(encoder output) with the encoder's trace, and the
    discriminator's trace on the real rows.
    """
    c, x, n = model.config, batch.x, batch.x.shape[0]
    enc = mlp_forward(nets["encoder"], x)
    mu, logvar = enc[0].chunk(2, dim=-1)
    std = (0.5 * logvar).exp()
    eps = torch.randn_like(mu)  # the draw `Fades.encode` makes, in the same order
    z = mu + eps * std
    _, z_y, z_s, z_r = z.chunk(4, dim=-1)
    dec = mlp_forward(nets["decoder"], z)
    diff = dec[0] - x
    known = (batch.group >= 0).to(x.dtype)
    head_y = mlp_forward(nets["head_y"], torch.cat([z_y, z_r], dim=-1))
    head_s = mlp_forward(nets["head_s"], torch.cat([z_s, z_r], dim=-1))
    tc = mlp_forward(nets["discriminator"], torch.cat([z_y, z_r, z_s], dim=-1))
    wce, d_y = softmax_cross_entropy(head_y[0], batch.y, model.class_weights[batch.y] / n)
    ce_s, d_s = softmax_cross_entropy(head_s[0], batch.group.clamp(min=0), known / known.sum().clamp(min=1))
    kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(-1).mean()
    terms = {"recon": diff.abs().sum() / n, "kl": kl, "wce_y": wce, "ce_s": ce_s, "tc": tc[0].mean()}
    d_z = mlp_backward(nets["decoder"], diff.sign_().div_(n), dec)
    d_yr = mlp_backward(nets["head_y"], d_y.mul_(c.lambda_cls), head_y)
    d_sr = mlp_backward(nets["head_s"], d_s.mul_(c.lambda_cls * c.alpha), head_s)
    if not bool(known.any()):  # autograd's CE(s) is then a constant: the head gets no gradient
        for p in model.head_s.parameters():
            p.grad = None
    d_tc = mlp_backward(nets["discriminator"], torch.full_like(tc[0], c.lambda_tc / n), tc,
                        weights=False)
    k = c.latent_dim
    d_z[:, k:2 * k] += d_yr[:, :k] + d_tc[:, :k]
    d_z[:, 2 * k:3 * k] += d_sr[:, :k] + d_tc[:, 2 * k:]
    d_z[:, 3 * k:] += d_yr[:, k:] + d_sr[:, k:] + d_tc[:, k:2 * k]
    if model.fair_on:
        d_z += _fairness_gradient(model, nets, z, batch, terms)
    d_mu = d_z + mu / n
    d_logvar = d_z.mul_(eps * std).mul_(0.5).add_(logvar.exp().sub_(1.0).mul_(0.5 / n))
    return terms, (torch.cat([d_mu, d_logvar], dim=-1), enc), tc


def _fairness_gradient(model: Fades, nets: dict[str, list[nn.Linear]], z: Tensor, batch: Batch,
                       terms: dict[str, Tensor]) -> Tensor:
    """λ_fair · d(fair)/dz of `Fades.fairness` by `pair_cmi_grad`; adds ``fair`` to ``terms``."""
    keep = batch.group >= 0
    grad = torch.zeros_like(z)
    if not bool(keep.any()):
        terms["fair"] = z.new_zeros(())
        return grad
    rows = slice(None) if bool(keep.all()) else keep
    _, z_y, z_s, z_r = z[rows].chunk(4, dim=-1)
    beta = model.config.beta
    cmi_y, d_y, d_ry = pair_cmi_grad(nets["head_y"], z_y, z_r, batch.group[rows], beta)
    cmi_s, d_s, d_rs = pair_cmi_grad(nets["head_s"], z_s, z_r, batch.y[rows], beta)
    terms["fair"] = 0.5 * (cmi_y + cmi_s)
    k, scale = z_y.shape[1], 0.5 * model.config.lambda_fair
    grad[rows, k:] = torch.cat([d_y, d_s, d_ry.add_(d_rs)], dim=-1).mul_(scale)
    return grad


def _discriminator_gradients(layers: list[nn.Linear], real: Trace) -> Tensor:
    """BCE of D on the real rows and a block-wise permutation of them; writes D's gradients.

    The real rows' trace is the main pass's: the main step does not move D. Returns the loss.
    """
    z_y, z_r, z_s = real[1][0].chunk(3, dim=-1)
    fake = mlp_forward(layers, permute_blocks([z_y, z_r, z_s]))
    n = real[0].shape[0]
    loss = 0.5 * (F.softplus(-real[0]).mean() + F.softplus(fake[0]).mean())
    d_out = torch.cat([torch.sigmoid(real[0]).sub_(1.0), torch.sigmoid(fake[0])]).mul_(0.5 / n)
    mlp_backward(layers, d_out, _cat((real, fake)), d_input=False)
    return loss
