"""The compiled cross-entropy logit gradient of the lockstep engine, against autograd."""

from __future__ import annotations

import torch
from torch.nn import functional as F  # noqa: N812

from strategies._ce_kernels import ce_logit_grad_


def test_lockstep_logit_gradient_is_autograds_for_every_fold_and_learning_rate():
    # Class-major products (F, C, L, B); run (f, l)'s logits are lr_l times them; rows
    # weighted by w (one zero: a padding row), the loss Σ_b w_b CE(logits_b, y_b).
    gen = torch.Generator().manual_seed(0)
    folds, classes, lrs, rows = 2, 4, (0.5, 2.0, 8.0), 5
    z = torch.randn(folds, classes, len(lrs), rows, generator=gen)
    y = torch.randint(0, classes, (folds, rows), generator=gen)
    w = torch.rand(folds, rows, generator=gen)
    w[1, -1] = 0.0
    nyw = -w[:, None, :] * F.one_hot(y, classes).float().transpose(1, 2)
    dz = torch.empty_like(z)
    ce_logit_grad_(z.numpy(), torch.tensor(lrs).numpy(), w[:, None, None, :].contiguous().numpy(),
                   nyw[:, :, None, :].contiguous().numpy(), dz.numpy())
    for f in range(folds):
        for j, lr in enumerate(lrs):
            logits = (lr * z[f, :, j, :].T).requires_grad_(True)
            loss = (w[f] * F.cross_entropy(logits, y[f], reduction="none")).sum()
            (grad,) = torch.autograd.grad(loss, logits)
            torch.testing.assert_close(dz[f, :, j, :].T, grad, rtol=1e-5, atol=1e-7)

