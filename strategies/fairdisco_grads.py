"""Pieces of FairDisCo's hand-written gradient (`strategies.fairdisco.FairDisCo.update`).

Its projection head's BatchNorm in training mode, and the supervised-contrastive loss's
gradient with respect to its similarity matrix; both tested through `FairDisCo.update`
against autograd on `FairDisCo.objective`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def batch_norm_train(bn: nn.BatchNorm1d, a: Tensor, running: dict[str, Tensor] | None = None
                     ) -> tuple[Tensor, Tensor]:
    """Normalise ``a`` by its batch statistics and update the running ones, as ``bn(a)`` in training.

    Parameters
    ----------
    bn : nn.BatchNorm1d
        The layer (momentum, eps; its running statistics unless ``running`` is given).
    a : Tensor
        Its input batch (..., n, features), n ≥ 2; leading axes are runs, each normalised
        over its own rows (`strategies.stacked`).
    running : dict of str to Tensor, optional
        ``running_mean``, ``running_var`` (..., features) and ``num_batches_tracked`` to
        update instead of ``bn``'s buffers.

    Returns
    -------
    tuple of Tensor
        The normalised batch (before the affine map) and 1 / sqrt(var + eps) per feature.
    """
    stats = running or {"running_mean": bn.running_mean, "running_var": bn.running_var,
                        "num_batches_tracked": bn.num_batches_tracked}
    mean = a.mean(-2, keepdim=True)
    centred = a - mean
    # By hand: torch's var(0) takes ~0.18 ms for a (32, 512) batch on one CPU thread,
    # about fifteen times these two passes.
    var = (centred * centred).mean(-2, keepdim=True)
    tracked = stats["num_batches_tracked"]
    m = bn.momentum if bn.momentum is not None else 1.0 / float(tracked.reshape(-1)[0] + 1)
    n = a.shape[-2]
    stats["running_mean"].mul_(1 - m).add_(mean.squeeze(-2), alpha=m)
    stats["running_var"].mul_(1 - m).add_(var.squeeze(-2) * (n / (n - 1)), alpha=m)
    tracked.add_(1)
    inv = (var + bn.eps).rsqrt()
    return centred.mul_(inv), inv


def supcon_sim_grad(sim: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """`supervised_contrastive_loss` from its similarity matrix, and the loss's gradient w.r.t. it.

    Parameters
    ----------
    sim : Tensor
        Similarities of the normalised projections divided by the temperature (..., n, n);
        leading axes are runs sharing the labels (`strategies.stacked`).
    y : Tensor
        Labels (n,); rows sharing a label are positives.

    Returns
    -------
    tuple of Tensor
        The loss (one per run) and its gradient with respect to ``sim``.
    """
    same = y[:, None] == y[None, :]
    positive = (same & ~torch.eye(len(y), dtype=torch.bool)).to(sim.dtype)
    n_pos = positive.sum().clamp(min=1)
    masked = sim.masked_fill(same, torch.finfo(sim.dtype).min)
    log_sigma = sim - torch.logaddexp(sim, torch.logsumexp(masked, dim=-1, keepdim=True))
    loss = -(log_sigma * positive).sum((-2, -1)) / n_pos
    # -log σ(s_ij - n_i) per positive pair; n_i (the negatives' logsumexp) spreads its share
    # over i's negatives by their softmax weights.
    slack = (1 - log_sigma.exp()).mul_(positive).div_(n_pos)
    spread = torch.softmax(masked, dim=-1).masked_fill_(same, 0.0)
    return loss, spread.mul_(slack.sum(-1, keepdim=True)).sub_(slack)
