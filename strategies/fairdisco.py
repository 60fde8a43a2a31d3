r"""FairDisCO: fair disentanglement with contrastive learning over frozen FM features (Du 2022).

A linear bottleneck :math:`h = W\phi(x) + b` (256-d) feeds three heads: the label head
:math:`f_\theta`, an attribute head :math:`g_\psi` over the sensitive attribute
``Batch.group`` (site by default; density or age band through ``config.sensitive``), and a
projection head :math:`p` (256→512→BN→ReLU→128, L2-normalised) for contrastive learning:

.. math::

    \mathcal{L} = \mathcal{L}_{WCE}(f_\theta(h), y)
                + \alpha\,\mathcal{L}_{conf}(g_\psi(h))
                + \ell_{CE}(g_\psi(\mathrm{sg}(h)), a)
                + \beta\,\mathcal{L}_{SupCon}(p(h), y),

where :math:`\mathcal{L}_{conf} = -\frac1N\sum_i \frac1K\sum_k \log \mathrm{softmax}_k`
pushes the attribute head's prediction towards uniform, and sg is stop-gradient. The
attribute head is *one* module applied twice: on :math:`\mathrm{sg}(h)` its cross-entropy
trains it to predict the attribute without shaping :math:`h`; on :math:`h` the confusion
loss trains :math:`h` to defeat that predictor. (Two separate heads would let the
confused head reach uniform output by zeroing its own weights, with no pressure on
:math:`h`.) Rows with ``group == -1`` are left out of both attribute terms but kept in
the label and contrastive terms. The contrastive term follows the paper's Table 1: each
positive pair (i, j) is scored against i's negatives only,
:math:`-\log \frac{e^{s_{ij}/\tau}}{e^{s_{ij}/\tau} + \sum_{k: y_k \ne y_i} e^{s_{ik}/\tau}}`,
averaged over positive pairs; it equals Khosla et al.'s (2020) :math:`L_{out}` whenever
each anchor has a single positive.

Reference: siyi-wind/FairDisCo (``Models/models_losses.py``, ``train_DisCo.py``): the same
heads, losses and weights, with a ResNet-18 whose ``fc`` is the (activation-free) 256-d
bottleneck; here the frozen FM features replace the ResNet body. Two deliberate
differences: the label loss is the paper's weighted cross-entropy (the reference uses
plain CE with a class-balancing sampler), and the contrastive loss is computed exactly in
log space (the reference adds 1e-5 inside its exponentials and logarithms).

Federated reading
-----------------
Federating averages all four modules while each client computes the loss on its own rows.
With the site as attribute a single-site client sees a constant attribute target: the
detached head learns it from its bias alone, and confusing a predictor that ignores
:math:`h` shapes :math:`h` in no useful direction, so the disentanglement term stops
removing site information. The contrastive term only ever pairs same-label samples *of
the same site*, so it no longer pulls sites together either — its Table 1 role
("D-invariant representations") is lost; only the within-client groups of density or
age band keep both terms meaningful. Restoring cross-site invariance needs a server-side
component (e.g. a centrally trained attribute head, or shared class prototypes for the
contrastive term).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812

from strategies.base import (
    Batch,
    Method,
    MethodConfig,
    TaskSpec,
    grad_buffer,
    known_group_cross_entropy,
    linear_grads,
    register,
    relu_backward_,
    softmax_cross_entropy,
    weighted_cross_entropy,
)
from strategies.fairdisco_grads import batch_norm_train, supcon_grad
from strategies.fairdisco_stacked import stacked_update
from strategies.fused_adam import optimizer_step


@dataclass(frozen=True)
class FairDisCoConfig(MethodConfig):
    """FairDisCO hyperparameters; optimisation defaults and search space are the paper's.

    All method defaults are siyi-wind/FairDisCo's: α = 1.0, β = 0.8 (``train_model``
    defaults in ``train_DisCo.py``), temperature 0.1, bottleneck 256, projection
    512 → 128 (``Models/models_losses.py``). The reference's Adam lr 1e-4 is inside the
    paper's search grid (`MethodConfig`), which sets the lr here.

    Attributes
    ----------
    alpha : float
        Weight of the confusion loss.
    beta : float
        Weight of the supervised contrastive loss.
    temperature : float
        Contrastive temperature τ.
    bottleneck : int
        Width of h.
    proj_hidden, proj_dim : int
        Hidden and output width of the projection head.
    """

    alpha: float = 1.0
    beta: float = 0.8
    temperature: float = 0.1
    bottleneck: int = 256
    proj_hidden: int = 512
    proj_dim: int = 128


def confusion_loss(logits: Tensor, mask: Tensor | None = None) -> Tensor:
    """Cross-entropy towards the uniform distribution, ``-mean_i mean_k log softmax(logits_i)_k``.

    Parameters
    ----------
    logits : Tensor
        Attribute logits (n, K).
    mask : Tensor, optional
        Boolean (n,): rows to include; all when omitted.

    Returns
    -------
    Tensor
        Scalar, minimal (log K) when every included row predicts the uniform distribution;
        0 when no row is included.
    """
    per_row = -F.log_softmax(logits, dim=1).mean(dim=1)
    if mask is None:
        mask = torch.ones_like(per_row, dtype=torch.bool)
    return (per_row * mask).sum() / mask.sum().clamp(min=1)


def supervised_contrastive_loss(z: Tensor, y: Tensor, temperature: float) -> Tensor:
    """Supervised contrastive loss of the paper's Table 1 on cosine similarities.

    Parameters
    ----------
    z : Tensor
        Projections (n, dim); normalised here.
    y : Tensor
        Labels (n,).
    temperature : float
        τ dividing the cosine similarities.

    Returns
    -------
    Tensor
        Mean over ordered positive pairs (i ≠ j, same label) of
        ``-log(exp(s_ij) / (exp(s_ij) + sum_{k: y_k != y_i} exp(s_ik)))``; anchors with no
        positive contribute nothing, and a batch with no positive pair gives 0.
    """
    zn = F.normalize(z, dim=1)
    sim = zn @ zn.T / temperature
    same = y[:, None] == y[None, :]
    positive = same & ~torch.eye(len(y), dtype=torch.bool, device=y.device)
    # A finite floor rather than -inf: an anchor without negatives then scores its
    # positives log 1 = 0 with finite gradients (-inf would give 0 * nan in backward).
    floor = torch.finfo(sim.dtype).min
    negatives = torch.logsumexp(sim.masked_fill(same, floor), dim=1, keepdim=True)
    log_prob = sim - torch.logaddexp(sim, negatives)
    return -(log_prob * positive).sum() / positive.sum().clamp(min=1)


@register("fairdisco")
class FairDisCo(Method):
    """Fair disentanglement with contrastive learning over frozen FM features.

    Parameters
    ----------
    spec : TaskSpec
        Input width, classes, groups of the sensitive attribute, class weights.
    config : FairDisCoConfig
        Loss weights, temperature and widths.
    """

    label = "FairDisCO"
    config_cls = FairDisCoConfig
    config: FairDisCoConfig
    #: A fold's learning rates train stacked in the search (`strategies.stacked`).
    stacked_step = staticmethod(stacked_update)
    #: Units that stop receiving gradient take Adam's moments through the denormal range.
    flush_denormals = True

    def __init__(self, spec: TaskSpec, config: MethodConfig) -> None:
        super().__init__(spec, config)
        c = self.config
        # No activation after the bottleneck: the reference's bottleneck is ResNet-18's
        # replaced ``fc`` and its ``self.activation`` is commented out.
        self.bottleneck = nn.Linear(spec.in_dim, c.bottleneck)
        self.classifier = nn.Linear(c.bottleneck, spec.n_classes)
        self.attribute = nn.Linear(c.bottleneck, spec.n_groups)
        self.projection = nn.Sequential(
            nn.Linear(c.bottleneck, c.proj_hidden), nn.BatchNorm1d(c.proj_hidden), nn.ReLU(),
            nn.Linear(c.proj_hidden, c.proj_dim),
        )

    def embed(self, x: Tensor) -> Tensor:
        """The bottleneck representation h (n, bottleneck)."""
        return self.bottleneck(x)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits."""
        return self.classifier(self.embed(x))

    def attribute_terms(self, h: Tensor, group: Tensor) -> tuple[Tensor, Tensor]:
        """Confusion loss of the attribute head on h and its cross-entropy on detached h.

        Parameters
        ----------
        h : Tensor
            Bottleneck features (n, bottleneck).
        group : Tensor
            Attribute codes (n,), ``-1`` where unknown (left out of both terms).

        Returns
        -------
        tuple of Tensor
            ``(confusion, cross_entropy)``, each 0 when no row has a known group.
        """
        conf = confusion_loss(self.attribute(h), group >= 0)
        leak = known_group_cross_entropy(self.attribute(h.detach()), group)
        return conf, leak

    def contrastive_term(self, h: Tensor, y: Tensor) -> Tensor:
        """Supervised contrastive loss of the projected bottleneck (0 for a single row)."""
        if h.shape[0] < 2:
            # BatchNorm cannot normalise one row in training mode, and one row has no
            # positive pair anyway.
            return h.new_zeros(())
        return supervised_contrastive_loss(self.projection(h), y, self.config.temperature)

    def objective(self, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        """WCE + α·confusion + attribute CE on detached h + β·SupCon."""
        c = self.config
        h = self.embed(batch.x)
        label = weighted_cross_entropy(self.classifier(h), batch.y, self.class_weights)
        conf, attr = self.attribute_terms(h, batch.group)
        supcon = self.contrastive_term(h, batch.y)
        loss = label + c.alpha * conf + attr + c.beta * supcon
        parts = {"loss": loss, "label": label, "conf": conf, "attr": attr, "supcon": supcon}
        return loss, {k: float(v.detach()) for k, v in parts.items()}

    def update(self, batch: Batch) -> dict[str, float]:
        """One optimiser step on `objective`, with its gradient written out by hand.

        The same losses, gradients and BatchNorm statistics as autograd on `objective`
        (tested to float round-off), into gradient buffers kept across steps: at batch
        8–32 autograd's graph bookkeeping costs about as much as the arithmetic.
        """
        assert self.optimizer is not None, "call configure_optimizer first"
        c = self.config
        with torch.no_grad():
            h = torch.addmm(self.bottleneck.bias, batch.x, self.bottleneck.weight.T)
            (label, conf, attr), d_h = self._head_grads(h, batch)
            supcon = h.new_zeros(())
            if h.shape[0] >= 2:
                supcon, d_proj = self._contrastive_grads(h, batch.y)
                d_h.add_(d_proj)
            else:  # as in `contrastive_term`: no projection, so no gradient for it this step
                for p in self.projection.parameters():
                    p.grad = None
            linear_grads(self.bottleneck, d_h, batch.x)
        optimizer_step(self.optimizer)
        loss = label + c.alpha * conf + attr + c.beta * supcon
        parts = {"loss": loss, "label": label, "conf": conf, "attr": attr, "supcon": supcon}
        return {k: float(v) for k, v in parts.items()}

    def _head_grads(self, h: Tensor, batch: Batch) -> tuple[tuple[Tensor, Tensor, Tensor], Tensor]:
        """Label, confusion and attribute losses; writes both heads' gradients; returns dL/dh so far."""
        n, k = h.shape[0], self.attribute.out_features
        label, d_label = softmax_cross_entropy(self.classifier(h), batch.y, self.class_weights[batch.y] / n)
        known = (batch.group >= 0).to(h.dtype)
        row = known / known.sum().clamp(min=1)
        logits = self.attribute(h)  # one head, two uses: the same logits for both terms
        log_p = torch.log_softmax(logits, dim=1)
        conf = -(row * log_p.mean(dim=1)).sum()
        attr, d_attr = softmax_cross_entropy(logits, batch.group.clamp(min=0), row)
        # Confusion pulls every class probability to 1/K; only it reaches h (the CE sees sg(h)).
        d_conf = (log_p.exp_() - 1.0 / k).mul_(row[:, None] * self.config.alpha)
        linear_grads(self.classifier, d_label, h)
        linear_grads(self.attribute, d_attr.add_(d_conf), h)
        d_h = torch.addmm(d_label @ self.classifier.weight, d_conf, self.attribute.weight)
        return (label, conf, attr), d_h

    def _contrastive_grads(self, h: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """SupCon of the projected h (BatchNorm in training); writes β·SupCon's projection gradients."""
        lin1, bn, _, lin2 = self.projection
        a1 = torch.addmm(lin1.bias, h, lin1.weight.T)
        xhat, inv = batch_norm_train(bn, a1)
        r = torch.addcmul(bn.bias, xhat, bn.weight).relu_()
        zp = torch.addmm(lin2.bias, r, lin2.weight.T)
        loss, d_zp = supcon_grad(zp, y, self.config.temperature, self.config.beta)
        linear_grads(lin2, d_zp, r)
        d_bn = relu_backward_(d_zp @ lin2.weight, r)
        torch.sum(d_bn * xhat, 0, out=grad_buffer(bn.weight))
        torch.sum(d_bn, 0, out=grad_buffer(bn.bias))
        d_xhat = d_bn * bn.weight
        d_a1 = (d_xhat - d_xhat.mean(0) - xhat * (d_xhat * xhat).mean(0)) * inv
        linear_grads(lin1, d_a1, h)
        return loss, d_a1 @ lin1.weight
