r"""FADES' conditional-mutual-information term: the batch estimator and the head on all pairs.

`strategies.fades` uses these. The estimator needs a head's class distribution on
all :math:`N^2` pairs :math:`[z_a^{(i)}, z_r^{(j)}]`, with gradients to the latents only:
`frozen_pair_probs` by autograd (the reference path), `pair_cmi_grad` by hand (training).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812

LEAK = 0.2  # LeakyReLU slope of every MLP (the reference's)


class Weighted(Protocol):
    """A linear layer's ``weight`` and ``bias``: an ``nn.Linear``, or its tensors."""

    weight: Tensor
    bias: Tensor


def entropy(p: Tensor, eps: float = 1e-7) -> Tensor:
    r"""Shannon entropy :math:`-\sum_k p_k \log(p_k + \epsilon)` over the last axis."""
    return -(p * torch.log(p + eps)).sum(-1)


def conditional_mutual_information(probs: Tensor, s: Tensor, beta: float = 0.5, eps: float = 1e-7) -> Tensor:
    r"""Batch estimate of :math:`I(\hat y; s \mid z_r) - \beta H(\hat y \mid z_r)`, K classes, M groups.

    .. math::

        \hat I_\beta = \frac{1-\beta}N\sum_j H\Big(\frac1N\sum_i q_{ij}\Big)
          - \frac1N\sum_j H\Big(\frac{\sum_i [s_i=s_j]\,q_{ij}}{\sum_i [s_i=s_j]}\Big)

    Parameters
    ----------
    probs : Tensor
        ``(N, N, K)``; ``probs[i, j]`` is the head's class distribution on
        :math:`[z_a^{(i)}, z_r^{(j)}]` (row index: the marginalised latent).
    s : Tensor
        ``(N,)`` integer codes of the conditioning variable (any number of values).
    beta : float
        Entropy-regulariser weight; ``beta=0`` gives the plain CMI estimate.
    eps : float
        Inside the logarithm, as in the reference.

    Returns
    -------
    Tensor
        Scalar; equals the reference ``CMI_loss`` for K = 2 (as ``(1-p, p)``) and binary s.
    """
    if probs.shape[0] == 0:
        return probs.sum() * 0.0
    marginal = probs.mean(0)
    same = (s[:, None] == s[None, :]).to(probs.dtype)
    conditional = (same[..., None] * probs).sum(0) / same.sum(0)[:, None]
    return (1.0 - beta) * entropy(marginal, eps).mean() - entropy(conditional, eps).mean()


def pair_grid(z_a: Tensor, z_r: Tensor) -> Tensor:
    """All pairs ``[z_a[i], z_r[j]]`` as an ``(N, N, d_a + d_r)`` tensor."""
    n = z_a.shape[0]
    return torch.cat([z_a[:, None, :].expand(n, n, -1), z_r[None, :, :].expand(n, n, -1)], dim=-1)


def frozen_pair_probs(head: nn.Sequential, z_a: Tensor, z_r: Tensor) -> Tensor:
    r"""Softmax of ``head`` on all pairs, with gradients to the latents only, not to ``head``.

    ``head`` is an MLP (Linear, LeakyReLU(`LEAK`), ..., Linear). Its first layer acts on
    a concatenation, so it splits:
    :math:`W[z_a^{(i)}; z_r^{(j)}] + b = W_a z_a^{(i)} + W_r z_r^{(j)} + b`.
    Two (N, d) products and a broadcast sum replace the (N², d_a + d_r) product on the
    `pair_grid` (the same function, about 15 % of a FADES update saved at batch 32).
    """
    params = [p.detach() for p in head.parameters()]
    first, rest = params[:2], params[2:]
    d_a = z_a.shape[-1]
    # The bias joins the (N, h) term before the broadcast: one pass fewer over (N, N, h).
    hidden = (torch.addmm(first[1], z_a, first[0][:, :d_a].T)[:, None, :]
              + (z_r @ first[0][:, d_a:].T)[None, :, :])
    for w, b in zip(rest[::2], rest[1::2], strict=True):
        hidden = F.linear(F.leaky_relu(hidden, LEAK, inplace=True), w, b)
    return hidden.softmax(-1)


def pair_cmi_grad(head: Sequence[Weighted], z_a: Tensor, z_r: Tensor, s: Tensor, beta: float = 0.5,
                  eps: float = 1e-7) -> tuple[Tensor, Tensor, Tensor]:
    r"""`conditional_mutual_information` of `frozen_pair_probs` and its gradients, by hand.

    The same value as autograd on those two functions, and its gradients with respect to
    ``z_a`` and ``z_r`` (the head stays frozen), without autograd's graph: `add_pair_cmi_grad`
    on ``[z_a, z_r]``. Float32 tensors on the CPU (`strategies.fades_update`'s path).

    Parameters
    ----------
    head : sequence of nn.Linear
        The head's two linear layers (a LeakyReLU(`LEAK`) between them), or anything
        with their ``weight`` and ``bias`` (`strategies.fades_update.Layer`).
    z_a, z_r : Tensor
        ``(N, d_a)`` and ``(N, d_r)`` latents; ``probs[i, j]`` pairs ``z_a[i]`` with ``z_r[j]``.
    s : Tensor
        ``(N,)`` integer codes of the conditioning variable.
    beta, eps : float
        As in `conditional_mutual_information`.

    Returns
    -------
    tuple of Tensor
        The scalar estimate, dÎ/dz_a and dÎ/dz_r.
    """
    d_a = z_a.shape[1]
    lat = torch.cat([z_a, z_r], dim=1).detach()
    grad = torch.zeros_like(lat)
    value = add_pair_cmi_grad(head, lat, (0, d_a, d_a), s, (beta, 1.0), grad, eps)
    return torch.tensor(value, dtype=lat.dtype), grad[:, :d_a], grad[:, d_a:]


def add_pair_cmi_grad(head: Sequence[Weighted], lat: Tensor, cols: tuple[int, int, int], s: Tensor,
                      weights: tuple[float, float], grad: Tensor, eps: float = 1e-7) -> float:
    r"""Î_β of ``head`` on all latent pairs; adds ``scale`` times its gradient into ``grad``.

    With :math:`m_j` the marginal and :math:`c_j` the conditional of
    `conditional_mutual_information`,

    .. math::

        \frac{\partial \hat I_\beta}{\partial q_{ij}}
          = \frac{1-\beta}{N^2} H'(m_j) - \frac{[s_i=s_j]}{N \sum_k [s_k=s_j]} H'(c_j),

    followed by the softmax, the second linear layer, the LeakyReLU and the split first
    layer (`frozen_pair_probs`), summed over the pair axis each latent varies along.
    The work on the N² pairs runs in compiled loops (`strategies._fades_pair_kernels`)
    that never hold the (N², h) activations, where torch's forty-odd small calls over
    1 MiB tensors cost more than the arithmetic; torch keeps the softmax (vectorised
    exp) and the products, the first layer's two halves as one GEMM on ``[[z_a, 0], [0,
    z_r]]`` and the gradient's two back to the latents as one (each small product paid
    its own cold start: four GEMMs a step where there were eight).

    Parameters
    ----------
    head : sequence of nn.Linear
        As in `pair_cmi_grad`.
    lat : Tensor
        ``(N, L)`` row-major float32 latents, z_a and z_r among its columns.
    cols : tuple of int
        ``(ca, da, cr)``: z_a is ``lat[:, ca:ca + da]``, z_r the head's remaining inputs
        from column ``cr``.
    s : Tensor
        ``(N,)`` integer codes of the conditioning variable.
    weights : tuple of float
        ``(beta, scale)``: the entropy weight of `conditional_mutual_information`, and the
        factor on the gradient.
    grad : Tensor
        ``(N, L)`` row-major float32, updated in place at z_a's and z_r's columns.
    eps : float
        As in `conditional_mutual_information`.

    Returns
    -------
    float
        The estimate Î_β.
    """
    # Imported here: numba costs a process ~0.15 s to import, and only FADES needs these kernels.
    from strategies import _fades_pair_kernels as kernels

    (w1, b1), (w2, b2) = ((layer.weight.detach(), layer.bias.detach()) for layer in head)
    n, (h, width) = lat.shape[0], w1.shape
    x, halves = torch.empty(2 * n, width), torch.empty(2 * n, h)
    kernels.pair_inputs(lat.numpy(), cols, x.numpy())
    torch.mm(x, w1.T, out=halves)
    a, r = halves.numpy()[:n], halves.numpy()[n:]
    logits = torch.empty(w2.shape[0], n, n)
    w2_ = w2.numpy()
    kernels.pair_logits(a, r, b1.numpy(), w2_, b2.numpy(), LEAK, logits.numpy())
    probs = torch.softmax(logits, 0).numpy()
    codes = np.ascontiguousarray(s.numpy(), dtype=np.int64)
    beta, scale = weights
    # The gradient at both halves, then both products back to the latents in one GEMM.
    g = torch.empty(2 * n, h)
    value = kernels.pair_grads(probs, codes, a, r, w2_, (beta, eps, LEAK), g.numpy()[:n], g.numpy()[n:])
    kernels.add_pair_grads(torch.mm(g, w1, out=x).numpy(), cols, scale, grad.numpy())
    return value
