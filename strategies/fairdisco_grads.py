"""Pieces of FairDisCo's hand-written gradient (`strategies.fairdisco.FairDisCo.update`).

Its projection head's BatchNorm in training mode, and the supervised-contrastive loss's
gradient with respect to the projections (a compiled kernel,
`strategies._fairdisco_kernels`); both tested through `FairDisCo.update` against autograd
on `FairDisCo.objective`.
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


def supcon_grad(zp: Tensor, y: Tensor, temperature: float, beta: float) -> tuple[Tensor, Tensor]:
    """`supervised_contrastive_loss` of projections, and β times its gradient with respect to them.

    Parameters
    ----------
    zp : Tensor
        Projections before normalisation (..., n, dim); leading axes are runs sharing the
        labels (`strategies.stacked`).
    y : Tensor
        Labels (n,); rows sharing a label are positives.
    temperature, beta : float
        τ dividing the cosine similarities, and the loss's weight in the objective.

    Returns
    -------
    tuple of Tensor
        The loss (one per run) and β · dLoss/dzp, shaped as ``zp``.
    """
    # Imported here: numba costs a process ~0.15 s to import, and only FairDisCO needs it.
    from strategies._fairdisco_kernels import supcon_grad_

    # A kernel on host arrays: the few thousand numbers go there and back (no copy on the CPU).
    flat = zp.detach().reshape(-1, *zp.shape[-2:]).cpu().contiguous()
    d_zp, losses = torch.empty_like(flat), torch.empty(flat.shape[0], dtype=zp.dtype)
    supcon_grad_(flat.numpy(), y.cpu().numpy(), temperature, beta, d_zp.numpy(), losses.numpy())
    return losses.reshape(zp.shape[:-2]).to(zp.device), d_zp.reshape(zp.shape).to(zp.device)
