r"""FADES' update with its gradient written out by hand (`strategies.fades.Fades.update`).

The same two steps as autograd on `Fades.terms` / `Fades.discriminator_loss` (tested
step by step to float round-off, same random draws in the same order): the main step
on encoder, decoder and heads, and the TC discriminator's. At batch 32 autograd's
graph over some 40 small layers and fresh gradient tensors cost about as much as the
arithmetic. The fairness term (the heads on all :math:`N^2` latent pairs) has its own
hand-written gradient, `strategies.fades_cmi.add_pair_cmi_grad`. The GEMMs stay torch's;
the losses and the latent's bookkeeping between them are compiled kernels
(`strategies._fades_kernels`), each working in place on a tensor it owns. Both steps
go to the compiled Adam of `strategies.flat_adam.FlatAdam`.

Every MLP here is Linear, LeakyReLU(`LEAK`), ..., Linear, so one forward that keeps each
layer's input and pre-activation, and one backward over them, serve them all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812

from strategies.base import Batch, grad_buffer
from strategies.fades_cmi import LEAK, add_pair_cmi_grad
from strategies.fused_adam import optimizer_step

if TYPE_CHECKING:
    from strategies.fades import Fades

#: The model's MLPs, by attribute name.
_NETS = ("encoder", "decoder", "head_y", "head_s", "discriminator")
#: (output, each Linear's input, each hidden pre-activation) of `mlp_forward`.
Trace = tuple[Tensor, list[Tensor], list[Tensor]]
#: `strategies._fades_kernels.leaky_back_`'s "no bias gradient".
_NO_SUMS = np.empty(0, np.float32)


def linears(mlp: nn.Module) -> list[nn.Linear]:
    """The Linear layers of an MLP, in order (a LeakyReLU(`LEAK`) between consecutive ones)."""
    return [m for m in mlp.modules() if isinstance(m, nn.Linear)]


class Layer(NamedTuple):
    """A Linear layer's tensors, as the hand-written passes use them."""

    weight: Tensor
    weight_t: Tensor
    bias: Tensor
    #: The parameters themselves (weight, bias), whose ``grad`` the backward writes.
    params: tuple[nn.Parameter, nn.Parameter]


def model_linears(model: Fades) -> dict[str, list[Layer]]:
    """Each of the model's MLPs' layers, by name, found once per model.

    Walking the modules takes about 0.1 ms, and each ``module.weight`` goes through
    ``nn.Module.__getattr__`` (0.7 µs, some 70 a step): paid at every one of a run's ~10⁴
    steps before. The tensors are detached views: optimizers and ``load_state_dict``
    update parameters in place, so the views stay current.
    """
    nets = model.__dict__.get("_linears")
    if nets is None:
        nets = model.__dict__["_linears"] = {
            name: [Layer(m.weight.detach(), m.weight.detach().T, m.bias.detach(), (m.weight, m.bias))
                   for m in linears(getattr(model, name))] for name in _NETS}
    return nets


def mlp_forward(layers: list[Layer], x: Tensor, last_bias: bool = True) -> Trace:
    """Run the MLP of ``layers`` on ``x``, keeping what its backward needs.

    Without ``last_bias`` the output lacks the last layer's bias, for a caller that adds
    it in its own pass over the output.
    """
    inputs, pres = [x], []
    h = torch.addmm(layers[0].bias, x, layers[0].weight_t)
    for k, layer in enumerate(layers[1:], 2):
        pres.append(h)
        inputs.append(F.leaky_relu(h, LEAK))
        last = k == len(layers) and not last_bias
        h = inputs[-1] @ layer.weight_t if last else torch.addmm(layer.bias, inputs[-1], layer.weight_t)
    return h, inputs, pres


def mlp_backward(layers: list[Layer], d_out: Tensor, trace: Trace, weights: bool = True,
                 d_input: bool = True, last_bias: bool = True) -> Tensor | None:
    """Backpropagate ``d_out`` through a `mlp_forward` trace.

    Writes every layer's weight and bias gradient when ``weights`` (but the last bias's
    without ``last_bias``: the caller's pass over ``d_out`` wrote it); returns
    dL/d(input) when ``d_input`` (else None, saving the first layer's input product).
    """
    # Imported here: numba costs a process ~0.15 s to import, and only FADES needs these kernels.
    from strategies import _fades_kernels as kernels

    _, inputs, pres = trace
    d = d_out
    if weights and last_bias:
        torch.sum(d, 0, out=grad_buffer(layers[-1].params[1]))
    for k in range(len(layers) - 1, -1, -1):
        if weights:
            torch.mm(d.T, inputs[k], out=grad_buffer(layers[k].params[0]))
        if k == 0 and not d_input:
            return None
        d = d @ layers[k].weight
        if k:  # the layer below's bias gradient comes out of the same pass
            bias = grad_buffer(layers[k - 1].params[1]).numpy() if weights else _NO_SUMS
            kernels.leaky_back_(d.numpy(), pres[k - 1].numpy(), LEAK, bias)
    return d


def _rows(trace: Trace, n: int) -> Trace:
    """The first ``n`` rows of a trace (views: each tensor is row-major)."""
    out, inputs, pres = trace
    return out[:n], [x[:n] for x in inputs], [p[:n] for p in pres]


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
        terms, (d_enc, enc), disc = _main_gradients(model, nets, batch)
        mlp_backward(nets["encoder"], d_enc, enc, d_input=False)
        # D's step reads the main pass's activations, not what the main step moves: its
        # gradient can come first, and both steps follow in one `optimizer_step`.
        disc_loss = _discriminator_gradients(nets["discriminator"], disc)
    optimizer_step(model.optimizer, model.disc_optimizer)
    return {"loss": model.combine(terms), **terms, "disc": disc_loss}


def _main_gradients(
    model: Fades, nets: dict[str, list[Layer]], batch: Batch,
) -> tuple[dict[str, float], tuple[Tensor, Trace], Trace]:
    """The terms of `Fades.terms`; writes the decoder's and heads' gradients.

    Returns the terms, dL/d(encoder output) with the encoder's trace, and the
    discriminator's trace on the real rows followed by their block-wise permutation.
    """
    # Imported here: numba costs a process ~0.15 s to import, and only FADES needs these kernels.
    from strategies import _fades_kernels as kernels

    c, x, n = model.config, batch.x, batch.x.shape[0]
    enc = mlp_forward(nets["encoder"], x)
    eps = torch.randn(n, enc[0].shape[1] // 2, dtype=x.dtype)  # `Fades.encode`'s draw, in its order
    z, var = torch.empty_like(eps), torch.empty_like(eps)
    kl = kernels.reparameterise(enc[0].numpy(), eps.numpy(), z.numpy(), var.numpy())  # eps becomes eps·std
    _, z_y, z_s, z_r = z.chunk(4, dim=-1)
    dec = mlp_forward(nets["decoder"], z, last_bias=False)  # `l1_residual_` adds the bias
    # D's input [z_y, z_r, z_s] on the real rows, then on `strategies.fades.permute_blocks`' shuffle for D's
    # own step (one pass for both), in one compiled pass: the permutations drawn as the
    # autograd path draws them, after the noise.
    both = torch.empty(2 * n, 3 * z_y.shape[1])
    kernels.discriminator_input(z.numpy(), *(torch.randperm(n).numpy() for _ in range(3)), both.numpy())
    # The heads' inputs are views: [z_y, z_r] leads D's input, and [z_s, z_r] ends z =
    # [z_x, z_y, z_s, z_r] (the products take strided rows).
    head_y = mlp_forward(nets["head_y"], both[:n, :2 * z_y.shape[1]])
    head_s = mlp_forward(nets["head_s"], z[:, 2 * z_y.shape[1]:])
    disc = mlp_forward(nets["discriminator"], both)
    tc = _rows(disc, n)
    groups = batch.group.numpy()
    known = groups >= 0
    # Each logits tensor becomes its (weighted) gradient in place: only the traces' inputs live on.
    wce = kernels.softmax_ce_(head_y[0].numpy(), batch.y.numpy(), model.class_weights.numpy(),
                              c.lambda_cls)
    ce_s = kernels.softmax_ce_(head_s[0].numpy(), groups, np.ones(head_s[0].shape[1], np.float32),
                               c.lambda_cls * c.alpha)
    # The decoder's output is not needed past its residual: it becomes d(recon)/d(output).
    diff, last = dec[0], nets["decoder"][-1]
    recon = kernels.l1_residual_(diff.numpy(), last.bias.numpy(), x.numpy(), 1.0 / n,
                                 grad_buffer(last.params[1]).numpy()) / n
    terms = {"recon": recon, "kl": kl, "wce_y": wce, "ce_s": ce_s, "tc": float(tc[0].mean())}
    d_z = mlp_backward(nets["decoder"], diff, dec, last_bias=False)
    d_yr = mlp_backward(nets["head_y"], head_y[0], head_y)
    d_sr = mlp_backward(nets["head_s"], head_s[0], head_s)
    if not known.any():  # autograd's CE(s) is then a constant: the head gets no gradient
        for p in model.head_s.parameters():
            p.grad = None
    d_tc = mlp_backward(nets["discriminator"], torch.full_like(tc[0], c.lambda_tc / n), tc, weights=False)
    kernels.add_head_grads_(d_z.numpy(), d_yr.numpy(), d_sr.numpy(), d_tc.numpy())
    if model.fair_on:
        terms["fair"] = _add_fairness_gradient(model, nets, (z, known), batch, d_z)
    d_enc = torch.empty_like(enc[0])
    kernels.reparameterise_back(enc[0].numpy(), eps.numpy(), var.numpy(), d_z.numpy(), d_enc.numpy())
    return terms, (d_enc, enc), disc


def _add_fairness_gradient(model: Fades, nets: dict[str, list[Layer]], latent: tuple[Tensor, np.ndarray],
                           batch: Batch, d_z: Tensor) -> float:
    """Add λ_fair · d(fair)/dz of `Fades.fairness` (`add_pair_cmi_grad`) to ``d_z``; return ``fair``.

    ``latent`` is the sampled z with the rows whose group is known.
    """
    z, known = latent
    if not known.any():
        return 0.0
    whole = bool(known.all())
    rows = slice(None) if whole else torch.from_numpy(known)
    lat = z if whole else z[rows]
    k, beta, scale = z.shape[1] // 4, model.config.beta, 0.5 * model.config.lambda_fair
    # d(fair)/dz over z = [z_x, z_y, z_s, z_r], added straight into d_z when every row counts.
    d = d_z if whole else torch.zeros_like(lat)
    fair = 0.0
    for head, s, col in (("head_y", batch.group, k), ("head_s", batch.y, 2 * k)):
        fair += 0.5 * add_pair_cmi_grad(nets[head], lat, (col, k, 3 * k), s[rows], (beta, scale), d)
    if not whole:
        d_z[rows] += d
    return fair


def _discriminator_gradients(layers: list[Layer], both: Trace) -> float:
    """BCE of D on the real rows and their block-wise permutation; writes D's gradients.

    ``both`` is the main pass's trace of D on the real rows, then the permuted ones: the
    main step does not move D. Returns the loss.
    """
    from strategies import _fades_kernels as kernels

    out = both[0]
    n = out.shape[0] // 2
    d_out = torch.empty_like(out)
    loss = kernels.discriminator_bce(out[:n].numpy(), out[n:].numpy(), d_out.numpy())
    mlp_backward(layers, d_out, both, d_input=False)
    return loss
