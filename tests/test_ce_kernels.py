"""The compiled cross-entropy logit gradients of the lockstep and stacked engines, against autograd."""

from __future__ import annotations

import torch
from torch.nn import functional as F  # noqa: N812

from strategies._ce_kernels import ce_logit_grad_
from strategies.stacked import stacked_ce_grad


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


def test_stacked_logit_gradient_is_autograds_for_every_run():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 6, 5, generator=gen) * 4
    target = torch.randint(0, 5, (6,), generator=gen)
    row = torch.rand(6, generator=gen)
    got = stacked_ce_grad(logits, target, row)
    for r in range(3):
        z = logits[r].clone().requires_grad_(True)
        (grad,) = torch.autograd.grad((row * F.cross_entropy(z, target, reduction="none")).sum(), z)
        torch.testing.assert_close(got[r], grad, rtol=1e-5, atol=1e-7)
