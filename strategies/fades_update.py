r"""FADES' update with its gradient written out by hand (`strategies.fades.Fades.update`).

The same two steps as autograd on `Fades.terms` / `Fades.discriminator_loss` (tested
step by step to float round-off, same random draws in the same order): the main step
on encoder, decoder and heads, then the TC discriminator's. At batch 32 autograd's
graph over some 40 small layers and fresh gradient tensors cost about as much as the
arithmetic. The fairness term (the heads on all :math:`N^2` latent pairs) has its own
hand-written gradient, `strategies.fades_cmi.pair_cmi_grad`. The GEMMs stay torch's;
the losses and the latent's bookkeeping between them are compiled kernels
(`strategies._fades_kernels`), each working in place on a tensor it owns.

Every MLP here is Linear, LeakyReLU(`LEAK`), ..., Linear, so one forward that keeps each
layer's input and pre-activation, and one backward over them, serve them all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812

from strategies.base import Batch, linear_grads, optimizer_step
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


def model_linears(model: Fades) -> dict[str, list[nn.Linear]]:
    """Each of the model's MLPs' `linears`, by name, found once per model.

    Walking the modules takes about 0.1 ms, paid at every one of a run's ~10⁴ steps before.
    """
    nets = model.__dict__.get("_linears")
    if nets is None:
        nets = model.__dict__["_linears"] = {name: linears(getattr(model, name)) for name in _NETS}
    return nets


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
    nets = model_linears(model)
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
    # Imported here: numba costs a process ~0.15 s to import, and only FADES needs these kernels.
    from strategies import _fades_kernels as kernels

    c, x, n = model.config, batch.x, batch.x.shape[0]
    enc = mlp_forward(nets["encoder"], x)
    eps = torch.randn(n, enc[0].shape[1] // 2, dtype=x.dtype)  # `Fades.encode`'s draw, in its order
    z = torch.empty_like(eps)
    kl = kernels.reparameterise(enc[0].numpy(), eps.numpy(), z.numpy())
    _, z_y, z_s, z_r = z.chunk(4, dim=-1)
    dec = mlp_forward(nets["decoder"], z)
    diff = dec[0].sub_(x)  # the decoder's output is not needed past its residual
    head_y = mlp_forward(nets["head_y"], torch.cat([z_y, z_r], dim=-1))
    head_s = mlp_forward(nets["head_s"], torch.cat([z_s, z_r], dim=-1))
    tc = mlp_forward(nets["discriminator"], torch.cat([z_y, z_r, z_s], dim=-1))
    groups = batch.group.numpy()
    known = groups >= 0
    # Each logits tensor becomes its (weighted) gradient in place: only the traces' inputs live on.
    wce = kernels.softmax_ce_(head_y[0].numpy(), batch.y.numpy(), model.class_weights.numpy(),
                              c.lambda_cls)
    ce_s = kernels.softmax_ce_(head_s[0].numpy(), groups, np.ones(head_s[0].shape[1], np.float32),
                               c.lambda_cls * c.alpha)
    recon = kernels.l1_sign_(diff.numpy(), 1.0 / n) / n  # diff becomes d(recon)/d(output)
    terms = {name: torch.tensor(v, dtype=x.dtype) for name, v in
             (("recon", recon), ("kl", kl), ("wce_y", wce), ("ce_s", ce_s))} | {"tc": tc[0].mean()}
    d_z = mlp_backward(nets["decoder"], diff, dec)
    d_yr = mlp_backward(nets["head_y"], head_y[0], head_y)
    d_sr = mlp_backward(nets["head_s"], head_s[0], head_s)
    if not known.any():  # autograd's CE(s) is then a constant: the head gets no gradient
        for p in model.head_s.parameters():
            p.grad = None
    d_tc = mlp_backward(nets["discriminator"], torch.full_like(tc[0], c.lambda_tc / n), tc,
                        weights=False)
    kernels.add_head_grads_(d_z.numpy(), d_yr.numpy(), d_sr.numpy(), d_tc.numpy())
    if model.fair_on:
        _add_fairness_gradient(model, nets, (z, known), batch, terms, d_z)
    d_enc = torch.empty_like(enc[0])
    kernels.reparameterise_back(enc[0].numpy(), eps.numpy(), d_z.numpy(), d_enc.numpy())
    return terms, (d_enc, enc), tc


def _add_fairness_gradient(model: Fades, nets: dict[str, list[nn.Linear]], latent: tuple[Tensor, np.ndarray],
                           batch: Batch, terms: dict[str, Tensor], d_z: Tensor) -> None:
    """Add λ_fair · d(fair)/dz of `Fades.fairness` (`pair_cmi_grad`) to ``d_z``; ``fair`` to ``terms``.

    ``latent`` is the sampled z with the rows whose group is known.
    """
    z, known = latent
    if not known.any():
        terms["fair"] = z.new_zeros(())
        return
    rows = slice(None) if known.all() else torch.from_numpy(known)
    _, z_y, z_s, z_r = z[rows].chunk(4, dim=-1)
    beta = model.config.beta
    cmi_y, d_y, d_ry = pair_cmi_grad(nets["head_y"], z_y, z_r, batch.group[rows], beta)
    cmi_s, d_s, d_rs = pair_cmi_grad(nets["head_s"], z_s, z_r, batch.y[rows], beta)
    terms["fair"] = 0.5 * (cmi_y + cmi_s)
    k, scale = z_y.shape[1], 0.5 * model.config.lambda_fair
    d_z[rows, k:] += torch.cat([d_y, d_s, d_ry.add_(d_rs)], dim=-1).mul_(scale)


def _discriminator_gradients(layers: list[nn.Linear], real: Trace) -> Tensor:
    """BCE of D on the real rows and a block-wise permutation of them; writes D's gradients.

    The real rows' trace is the main pass's: the main step does not move D. Returns the loss.
    """
    from strategies import _fades_kernels as kernels

    z_y, z_r, z_s = real[1][0].chunk(3, dim=-1)
    fake = mlp_forward(layers, permute_blocks([z_y, z_r, z_s]))
    d_out = real[0].new_empty(2 * real[0].shape[0], 1)
    loss = kernels.discriminator_bce(real[0].numpy(), fake[0].numpy(), d_out.numpy())
    mlp_backward(layers, d_out, _cat((real, fake)), d_input=False)
    return torch.tensor(loss)
