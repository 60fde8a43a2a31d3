r"""DANN: domain-adversarial training of a feature map over frozen FM features (Ganin 2016).

A feature map :math:`\phi_z` (MLP ``d → hidden → hidden``, ReLU) feeds a label head
:math:`f_\theta` and, through a gradient-reversal layer :math:`R_\lambda`, a
``n_groups``-way discriminator :math:`g_\psi` over the sensitive attribute ``Batch.group``
(the site by default, density or age band through ``config.sensitive``):

.. math::

    \mathcal{L} = \mathcal{L}_{WCE}(f_\theta(\phi_z(x)), y)
                + \ell_{CE}(g_\psi(R_\lambda(\phi_z(x))), a),

with :math:`R_\lambda(z) = z` forward and :math:`-\lambda\,\partial` backward. One
minimisation therefore trains :math:`g_\psi` to predict the attribute and :math:`\phi_z`
to *maximise* its loss — the paper's Table 1 objective
:math:`\mathcal{L}_{WCE} - \ell_d`. Rows whose attribute is unknown (``group == -1``) are
left out of the discriminator term but kept in the label loss.

The reversal coefficient warms up with training progress :math:`p \in [0, 1)` as
:math:`\lambda(p) = 2/(1+e^{-\gamma p}) - 1`, the schedule of Transfer-Learning-Library's
``WarmStartGradientReverseLayer`` (thuml/Transfer-Learning-Library), whose gradient-reversal
function this module's `grad_reverse` mirrors.

Federated reading
-----------------
Federating averages :math:`\phi_z`, :math:`f_\theta` and :math:`g_\psi` across clients, but
each client's adversarial term sees only its own rows. With the site as attribute, a
single-site client's discriminator sees a constant target: it fits it with its bias, its
loss and hence the reversed gradient into :math:`\phi_z` vanish, and the local objective
degenerates to the label loss; FedAvg of such discriminators is not a site classifier.
The adversary only works where a client holds several groups (density, age band), and then
it removes *within-client* group information. Cross-site invariance needs a server-side
component (e.g. a discriminator trained on shared embedding statistics, as in federated
adversarial domain adaptation), which this file does not provide.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from strategies.base import (
    Batch,
    Method,
    MethodConfig,
    TaskSpec,
    known_group_cross_entropy,
    linear_grads,
    register,
    relu_backward_,
    softmax_cross_entropy,
    weighted_cross_entropy,
)
from strategies.dann_stacked import stacked_update
from strategies.fused_adam import optimizer_step


@dataclass(frozen=True)
class DannConfig(MethodConfig):
    """DANN hyperparameters; optimisation defaults and search space are the paper's (`MethodConfig`).

    Attributes
    ----------
    hidden : int
        Width of both feature-map layers and of the discriminator's hidden layer. 256 is
        Transfer-Learning-Library's bottleneck width; its discriminator is 1024 wide,
        kept at 256 here so that the probe stays small.
    gamma : float
        Steepness of the λ warm-up. 10 is Ganin et al. (2016, JMLR), where p is the
        fraction of training done. Transfer-Learning-Library uses 1, but its p is
        ``iteration / 1000`` and runs well past 1 over a training run; with our p < 1,
        γ = 1 would cap λ at 0.46, γ = 10 reaches 0.9999.
    """

    hidden: int = 256
    gamma: float = 10.0


class _GradReverse(torch.autograd.Function):
    """Identity forward; gradient times ``-lam`` backward (torch.func-compatible form)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, lam: float) -> Tensor:  # noqa: D102
        # A view, not x itself: autograd needs a new tensor to attach this node to.
        return x.view_as(x)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor, float], output: Tensor) -> None:  # noqa: D102
        ctx.lam = inputs[1]

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # noqa: D102
        return grad * -ctx.lam, None


def grad_reverse(x: Tensor, lam: float) -> Tensor:
    r"""Gradient-reversal layer :math:`R_\lambda`.

    Parameters
    ----------
    x : Tensor
        Input of any shape.
    lam : float
        Reversal coefficient λ.

    Returns
    -------
    Tensor
        ``x`` unchanged; in the backward pass the gradient is multiplied by ``-lam``.
    """
    return _GradReverse.apply(x, lam)


def lambda_schedule(progress: float, gamma: float) -> float:
    r"""Reversal coefficient :math:`\lambda(p) = 2/(1+e^{-\gamma p}) - 1`.

    Parameters
    ----------
    progress : float
        Training progress p in [0, 1).
    gamma : float
        Steepness of the warm-up.

    Returns
    -------
    float
        0 at p = 0, increasing towards (never reaching) 1.
    """
    return 2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0


@register("dann")
class Dann(Method):
    """Domain-adversarial network over frozen FM features.

    Parameters
    ----------
    spec : TaskSpec
        Input width, classes, groups of the sensitive attribute, class weights.
    config : DannConfig
        Widths and λ schedule.
    """

    label = "DANN"
    config_cls = DannConfig
    config: DannConfig
    #: A fold's learning rates train stacked in the search (`strategies.stacked`).
    stacked_step = staticmethod(stacked_update)
    #: Units that stop receiving gradient take Adam's moments through the denormal range.
    flush_denormals = True

    def __init__(self, spec: TaskSpec, config: MethodConfig) -> None:
        super().__init__(spec, config)
        h = self.config.hidden
        self.features = nn.Sequential(nn.Linear(spec.in_dim, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU())
        self.classifier = nn.Linear(h, spec.n_classes)
        self.discriminator = nn.Sequential(nn.Linear(h, h), nn.ReLU(), nn.Linear(h, spec.n_groups))
        self.lam = 0.0

    def begin_epoch(self, progress: float) -> None:
        """Set λ from training progress (constant within the epoch)."""
        self.lam = lambda_schedule(progress, self.config.gamma)

    def embed(self, x: Tensor) -> Tensor:
        r"""The learned representation :math:`\phi_z(x)` (n, hidden)."""
        return self.features(x)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits."""
        return self.classifier(self.embed(x))

    def discriminator_loss(self, z: Tensor, group: Tensor) -> Tensor:
        """Discriminator cross-entropy on ``z`` seen through the reversal layer (current λ).

        Parameters
        ----------
        z : Tensor
            Embeddings from `embed` (n, hidden).
        group : Tensor
            Group codes (n,), ``-1`` where unknown (left out).

        Returns
        -------
        Tensor
            Scalar loss; 0 when no row has a known group.
        """
        return known_group_cross_entropy(self.discriminator(grad_reverse(z, self.lam)), group)

    def objective(self, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        """Weighted cross-entropy plus the reversed discriminator loss."""
        z = self.embed(batch.x)
        label = weighted_cross_entropy(self.classifier(z), batch.y, self.class_weights)
        domain = self.discriminator_loss(z, batch.group)
        loss = label + domain
        logs = {"loss": float(loss.detach()), "label": float(label.detach()),
                "domain": float(domain.detach()), "lambda": self.lam}
        return loss, logs

    def update(self, batch: Batch) -> dict[str, float]:
        """One optimiser step on `objective`, with its gradient written out by hand.

        The same loss and gradient as autograd on `objective` (tested to float
        round-off), written into gradient buffers kept across steps (`grad_buffer`): at
        batch 8–32 autograd's graph bookkeeping and fresh gradients cost as much as the
        arithmetic.
        """
        assert self.optimizer is not None, "call configure_optimizer first"
        with torch.no_grad():
            acts, (label, d_logits), (domain, d_disc) = self._forward_losses(batch)
            self._backward(batch.x, acts, d_logits, d_disc)
        optimizer_step(self.optimizer)
        loss = label + domain
        return {"loss": float(loss), "label": float(label), "domain": float(domain), "lambda": self.lam}

    def _forward_losses(self, batch: Batch) -> tuple[tuple[Tensor, ...], tuple[Tensor, Tensor],
                                                     tuple[Tensor, Tensor]]:
        """Activations (h1, z, hd) and each loss with its gradient w.r.t. its logits."""
        (l1, _, l2, _), (d1, _, d2) = self.features, self.discriminator
        h1 = torch.addmm(l1.bias, batch.x, l1.weight.T).relu_()
        z = torch.addmm(l2.bias, h1, l2.weight.T).relu_()
        hd = torch.addmm(d1.bias, z, d1.weight.T).relu_()
        n = batch.x.shape[0]
        label = softmax_cross_entropy(torch.addmm(self.classifier.bias, z, self.classifier.weight.T),
                                      batch.y, self.class_weights[batch.y] / n)
        known = (batch.group >= 0).to(z.dtype)
        domain = softmax_cross_entropy(torch.addmm(d2.bias, hd, d2.weight.T), batch.group.clamp(min=0),
                                       known / known.sum().clamp(min=1))
        return (h1, z, hd), label, domain

    def _backward(self, x: Tensor, acts: tuple[Tensor, ...], d_logits: Tensor, d_disc: Tensor) -> None:
        """Write every parameter's gradient; the reversal scales the discriminator's path by -λ."""
        h1, z, hd = acts
        l2, (d1, _, d2) = self.features[2], self.discriminator
        d_hd = relu_backward_(d_disc @ d2.weight, hd)
        d_z = torch.addmm(d_logits @ self.classifier.weight, d_hd, d1.weight, alpha=-self.lam)
        d_z = relu_backward_(d_z, z)
        d_h1 = relu_backward_(d_z @ l2.weight, h1)
        for layer, d_out, inp in ((self.features[0], d_h1, x), (l2, d_z, h1), (self.classifier, d_logits, z),
                                  (d1, d_hd, z), (d2, d_disc, hd)):
            linear_grads(layer, d_out, inp)
