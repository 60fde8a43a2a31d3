r"""FADES' conditional-mutual-information term: the batch estimator and the head on all pairs.

`strategies.fades` uses these. The estimator needs a head's class distribution on
all :math:`N^2` pairs :math:`[z_a^{(i)}, z_r^{(j)}]`, with gradients to the latents only:
`frozen_pair_probs` by autograd (the reference path), `pair_cmi_grad` by hand (training).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812

LEAK = 0.2  # LeakyReLU slope of every MLP (the reference's)


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


def _entropy_grad(q: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    r"""`entropy` over the first axis of ``q`` and its gradient :math:`-\log(q+\epsilon) - q/(q+\epsilon)`."""
    shifted = q + eps
    log = shifted.log()
    return -(q * log).sum(0), (q / shifted).add_(log).neg_()


def pair_cmi_grad(head: list[nn.Linear], z_a: Tensor, z_r: Tensor, s: Tensor, beta: float = 0.5,
                  eps: float = 1e-7) -> tuple[Tensor, Tensor, Tensor]:
    r"""`conditional_mutual_information` of `frozen_pair_probs` and its gradients, by hand.

    The same value as autograd on those two functions, and its gradients with respect to
    ``z_a`` and ``z_r`` (the head stays frozen), without autograd's graph. With
    :math:`m_j` the marginal and :math:`c_j` the conditional of
    `conditional_mutual_information`,

    .. math::

        \frac{\partial \hat I_\beta}{\partial q_{ij}}
          = \frac{1-\beta}{N^2} H'(m_j) - \frac{[s_i=s_j]}{N \sum_k [s_k=s_j]} H'(c_j),

    followed by the softmax, the second linear layer, the LeakyReLU and the split first
    layer (`frozen_pair_probs`), summed over the pair axis each latent varies along.
    The class axis comes first, ``(K, N, N)``: torch's CPU softmax over a last axis of
    4–8 classes costs ~0.15 ms for N² = 1024 pairs, ten times its arithmetic, and
    the (K, N²) logits are one well-shaped product.

    Parameters
    ----------
    head : list of nn.Linear
        The head's two linear layers (a LeakyReLU(`LEAK`) between them).
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
    first, second = head
    n, d_a = z_a.shape
    w_a, w_r = first.weight[:, :d_a], first.weight[:, d_a:]
    act = torch.addmm(first.bias, z_a, w_a.T)[:, None, :] + (z_r @ w_r.T)[None, :, :]
    F.leaky_relu(act, LEAK, inplace=True)  # its sign is the pre-activation's: enough for the backward
    pairs = act.view(n * n, -1)
    logits = torch.addmm(second.bias[:, None], second.weight, pairs.T)
    probs = logits.sub_(logits.max(0).values).exp_()
    probs = probs.div_(probs.sum(0)).view(-1, n, n)
    same = (s[:, None] == s[None, :]).to(probs.dtype)
    count = same.sum(0)
    h_m, g_m = _entropy_grad(probs.mean(1), eps)
    h_c, g_c = _entropy_grad((probs * same).sum(1) / count, eps)
    value = (1.0 - beta) * h_m.mean() - h_c.mean()
    d_probs = (same * (g_c / (-n * count))[:, None, :]).add_(g_m[:, None, :] * ((1.0 - beta) / n**2))
    d_logits = d_probs.sub_((d_probs * probs).sum(0)).mul_(probs).view(-1, n * n)
    d_act = torch.mm(d_logits.T, second.weight)
    torch.ops.aten.leaky_relu_backward.grad_input(d_act, pairs, LEAK, True, grad_input=d_act)
    d_act = d_act.view(n, n, -1)
    return value, d_act.sum(1) @ w_a, d_act.sum(0) @ w_r
