r"""FADES: fair disentanglement with sensitive relevance (Jang & Wang, CVPR 2024), on FM features.

A VAE over the frozen features splits its latent into four 32-d blocks
:math:`z = [z_x, z_y, z_s, z_r]`: :math:`z_y` for the label, :math:`z_s` for the sensitive
attribute :math:`s` (``Batch.group``: the site by default), :math:`z_r` for what is relevant
to both, :math:`z_x` for the rest. A label head reads :math:`[z_y, z_r]`, a sensitive head
:math:`[z_s, z_r]`; a discriminator :math:`D` on :math:`[z_y, z_r, z_s]` estimates their total
correlation. Prediction is the label head on the posterior means of :math:`[z_y, z_r]`.

Objective (per batch; ``update`` then takes a separate step on :math:`D`)

.. math::

    \mathcal L = \underbrace{\|x-\hat x\|_1 + \mathrm{KL}(q(z|x)\|\mathcal N(0, I))}_{\text{ELBO}}
      + \lambda_{cls}(\mathcal L_{WCE}(y) + \alpha\,\mathrm{CE}(s))
      + \lambda_{tc}\log\tfrac{D(z)}{1-D(z)}
      + \mathbb 1[\text{epoch}\ge 1]\,\lambda_{fair}\,\tfrac12\big(\hat I_\beta(\hat y; s\mid z_r)
      + \hat I_\beta(\hat s; y\mid z_r)\big),

with :math:`D` trained (BCE) to tell :math:`[z_y, z_r, z_s]` from its block-wise batch
permutation, as in FactorVAE. Rows with ``group == -1`` drop out of CE(s) and both CMI terms.

Reference followed: ``Taeuk-Jang/FADES`` (``train_FADES.py``, ``utils.CMI_loss``,
``module.Encoder_tab``/``Decoder_tab``/``Classifier``); defaults are its
:math:`\alpha=\beta=0.5, \lambda_{cls}=10^3, \lambda_{tc}=10^2, \lambda_{fair}=10^2`.
Deviations: one Adam (the paper's fixed lr) for encoder, decoder and heads instead of three
learning rates with decay; a linear decoder output (features are standardised, not [0, 1]);
the discriminator's permuted samples come from the same batch, not a second loader; and the
fairness gradient reaches the encoder only. The reference tries to freeze the heads for the
fairness term, but misspells ``requires_grad``, so there the heads move too; we do what it
meant (the heads could otherwise lower the CMI by ignoring :math:`z_y`).

Multi-class CMI. What ``CMI_loss`` computes is not :math:`I(y; z\mid s)` but
:math:`I(\hat y; s\mid z_r) - \beta H(\hat y\mid z_r)` (the CMI minus the paper's
:math:`\mathcal L_{reg}`), with the other latent marginalised over the batch. With
:math:`q_{ij} = p(\hat y\mid z_a^{(i)}, z_r^{(j)}) \in \Delta^{K-1}` for all :math:`N^2` pairs
(:math:`z_a = z_y`, or :math:`z_s` for the second term) and :math:`M`-valued codes :math:`s_j`
(:math:`y` conditions the second term), see `strategies.fades_cmi`:

.. math::

    \bar q_j = \frac1N\sum_i q_{ij}, \quad
    \bar q_j^{s} = \frac{\sum_i [s_i = s_j]\,q_{ij}}{\sum_i [s_i = s_j]}, \quad
    \hat I_\beta = (1-\beta)\frac1N\sum_j H(\bar q_j) - \frac1N\sum_j H(\bar q_j^{s}),
    \quad H(p) = -\sum_{k=1}^K p_k\log(p_k+\epsilon).

For :math:`K = 2`, :math:`H` of :math:`(1-p, p)` is the reference's binary entropy, and for
:math:`M = 2` the group sum is its two masked means over ``s == 1`` / ``s == 0``, summed and
divided by :math:`N`: the reference is the case :math:`K = M = 2` term by term.

Federated reading. Training is local (FedAvg of the whole model, discriminator included).
When :math:`s` is the site, a one-site client sees a single value of :math:`s`: CE(s) is
solved by a bias, :math:`\bar q^{s}_j = \bar q_j`, so :math:`\hat I(\hat y; s\mid z_r) = 0`
exactly and the first term is just :math:`-\beta H(\hat y\mid z_r)` (it only keeps label
information out of :math:`z_r`); the second fades as the sensitive head saturates on the
constant site.
Federated FADES with ``sensitive="site"`` is thus FedAvg of a VAE classifier with a TC
penalty, with no pressure to remove site information; the disentanglement needs
:math:`s` to vary within a client (``density``, ``age_band``) or cross-client group
statistics, which the current interface does not provide.
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
    input_major_,
    make_optimizer,
    register,
    weighted_cross_entropy,
)
from strategies.fades_cmi import LEAK, conditional_mutual_information, frozen_pair_probs
from strategies.fades_update import manual_update
from strategies.flat_adam import FlatAdam
from strategies.fused_adam import optimizer_step

N_BLOCKS = 4  # z_x, z_y, z_s, z_r


@dataclass(frozen=True)
class FadesConfig(MethodConfig):
    """Paper protocol for FADES (fixed batch 32, lr 1e-4, 30 epochs) and the reference weights.

    Attributes
    ----------
    latent_dim : int
        Size of each of the four latent blocks.
    head_hidden : int
        Hidden width of the label, sensitive and discriminator MLPs.
    alpha : float
        Weight of the sensitive-attribute CE inside the classification term.
    beta : float
        Weight of the entropy regulariser inside each CMI estimate.
    lambda_cls, lambda_tc, lambda_fair : float
        Weights of the classification, total-correlation and fairness terms.
    fair_warmup_epochs : int
        Epochs without the fairness term (the reference's warm-up).
    """

    batch_size: int = 32
    lr: float = 1e-4
    epochs: int = 30
    searchable: bool = False
    latent_dim: int = 32
    head_hidden: int = 256
    alpha: float = 0.5
    beta: float = 0.5
    lambda_cls: float = 1e3
    lambda_tc: float = 1e2
    lambda_fair: float = 1e2
    fair_warmup_epochs: int = 1


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL of the diagonal Gaussian posterior to N(0, I), summed over dimensions, batch mean."""
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(-1).mean()


def permute_blocks(blocks: list[Tensor]) -> Tensor:
    """Concatenate ``blocks`` after shuffling each over the batch independently (FactorVAE)."""
    return torch.cat([b[torch.randperm(b.shape[0], device=b.device)] for b in blocks], dim=-1)


def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers with LeakyReLU(0.2) between them (the reference's activation)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers += [nn.Linear(a, b)] + ([nn.LeakyReLU(LEAK)] if i < len(sizes) - 2 else [])
    return nn.Sequential(*layers)


@register("fades")
class Fades(Method):
    """VAE with label/sensitive/residual latents, TC discriminator and CMI fairness term."""

    label = "FADES"
    config_cls = FadesConfig
    config: FadesConfig

    def __init__(self, spec: TaskSpec, config: MethodConfig) -> None:
        super().__init__(spec, config)
        # A plain MethodConfig (e.g. from a generic caller) keeps its attribute choice only.
        cfg = config if isinstance(config, FadesConfig) else FadesConfig(sensitive=config.sensitive)
        self.config = cfg
        z, h = cfg.latent_dim, cfg.head_hidden
        # Encoder d -> 128 -> 64 -> (mean, log-variance) of all four blocks (reference Encoder_tab).
        self.encoder = nn.Sequential(mlp([spec.in_dim, 128, 64]), nn.LeakyReLU(LEAK),
                                     nn.Linear(64, 2 * N_BLOCKS * z))
        self.decoder = mlp([N_BLOCKS * z, 64, 128, spec.in_dim])
        self.head_y = mlp([2 * z, h, spec.n_classes])
        self.head_s = mlp([2 * z, h, max(spec.n_groups, 1)])
        self.discriminator = mlp([3 * z, h, 1])
        self.disc_optimizer: torch.optim.Optimizer | None = None
        self.fair_on = False

    def configure_optimizer(self, lr: float) -> None:
        """One Adam for encoder, decoder and heads, a second for the discriminator.

        On float32 CPU parameters both are `FlatAdam` (a sixth of the update was torch's
        Adam); the parameters then move into its buffers, so the update's cached views
        of them are dropped.
        """
        input_major_(self, self.spec.in_dim)
        self.__dict__.pop("_linears", None)
        disc = set(map(id, self.discriminator.parameters()))
        main = [p for p in self.parameters() if id(p) not in disc]
        flat = all(p.dtype == torch.float32 and p.device.type == "cpu" for p in self.parameters())
        if flat and self.config.optimizer == "adam":
            self.optimizer = FlatAdam(main, lr, self.config.weight_decay)
        else:
            self.optimizer = make_optimizer(main, self.config, lr)
        d_params = list(self.discriminator.parameters())
        self.disc_optimizer = FlatAdam(d_params, lr) if flat else torch.optim.Adam(d_params, lr, fused=True)

    def begin_epoch(self, progress: float) -> None:
        """Switch the fairness term on after ``fair_warmup_epochs`` of ``config.epochs``."""
        start = self.config.fair_warmup_epochs / max(self.config.epochs, 1)
        self.fair_on = progress >= start - 1e-9

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Latent sample (posterior mean in eval mode), mean and log-variance, ``(N, 4 z)``."""
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training else mu
        return z, mu, logvar

    def forward(self, x: Tensor) -> Tensor:
        """Class logits of the label head on the posterior means of ``[z_y, z_r]``."""
        _, z_y, _, z_r = self.encode(x)[1].chunk(N_BLOCKS, dim=-1)
        return self.head_y(torch.cat([z_y, z_r], dim=-1))

    def fairness(self, z: Tensor, y: Tensor, s: Tensor) -> Tensor:
        r"""½ (Î(ŷ; s | z_r) + Î(ŝ; y | z_r)) on rows whose ``s`` is known."""
        keep = s >= 0
        if not bool(keep.any()):
            return z.sum() * 0.0
        if not bool(keep.all()):  # (boolean indexing costs a few ops: only when needed)
            z, y, s = z[keep], y[keep], s[keep]
        _, z_y, z_s, z_r = z.chunk(N_BLOCKS, dim=-1)
        beta = self.config.beta
        cmi_y = conditional_mutual_information(frozen_pair_probs(self.head_y, z_y, z_r), s, beta)
        cmi_s = conditional_mutual_information(frozen_pair_probs(self.head_s, z_s, z_r), y, beta)
        return 0.5 * (cmi_y + cmi_s)

    def terms(self, batch: Batch) -> tuple[dict[str, Tensor], Tensor]:
        """Every loss term on ``batch``, and the (detached) TC latent ``[z_y, z_r, z_s]``."""
        z, mu, logvar = self.encode(batch.x)
        _, z_y, z_s, z_r = z.chunk(N_BLOCKS, dim=-1)
        keep = batch.group >= 0
        logits_s = self.head_s(torch.cat([z_s, z_r], dim=-1))
        ce_s = F.cross_entropy(logits_s[keep], batch.group[keep]) if bool(keep.any()) else z.sum() * 0.0
        tc_z = torch.cat([z_y, z_r, z_s], dim=-1)
        out = {
            "recon": F.l1_loss(self.decoder(z), batch.x, reduction="sum") / batch.x.shape[0],
            "kl": gaussian_kl(mu, logvar),
            "wce_y": weighted_cross_entropy(self.head_y(torch.cat([z_y, z_r], dim=-1)), batch.y,
                                            self.class_weights),
            "ce_s": ce_s,
            # log D/(1-D) is the discriminator's logit: no sigmoid/log round trip.
            "tc": self.discriminator(tc_z).mean(),
        }
        if self.fair_on:
            out["fair"] = self.fairness(z, batch.y, batch.group)
        return out, tc_z.detach()

    def combine(self, t: dict[str, Tensor]) -> Tensor:
        """Weighted sum of the terms of `terms`."""
        c = self.config
        loss = t["recon"] + t["kl"] + c.lambda_cls * (t["wce_y"] + c.alpha * t["ce_s"])
        loss = loss + c.lambda_tc * t["tc"]
        return loss + c.lambda_fair * t["fair"] if "fair" in t else loss

    def objective(self, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        """Main-model loss (ELBO, classification, TC and, after warm-up, fairness) and logs."""
        t, _ = self.terms(batch)
        loss = self.combine(t)
        return loss, {"loss": float(loss.detach()), **{k: float(v.detach()) for k, v in t.items()}}

    def discriminator_loss(self, tc_z: Tensor) -> Tensor:
        """BCE of the TC discriminator: real ``tc_z`` vs its block-wise permutation."""
        z_y, z_r, z_s = tc_z.chunk(3, dim=-1)
        # Real and permuted rows in one pass of D (the same per-row function, fewer ops).
        logits = self.discriminator(torch.cat([tc_z, permute_blocks([z_y, z_r, z_s])]))
        real, fake = logits.split(tc_z.shape[0])
        return 0.5 * (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
                      + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))

    def update(self, batch: Batch) -> dict[str, float]:
        """Main step on encoder, decoder and heads, then one discriminator step.

        In training on the CPU in float32 the gradients are written by hand
        (`strategies.fades_update`, tested against `autograd_update` step by step).
        """
        assert self.optimizer is not None and self.disc_optimizer is not None, "configure_optimizer first"
        if self.training and batch.x.is_cpu and batch.x.dtype == torch.float32:
            return manual_update(self, batch)
        return self.autograd_update(batch)

    def autograd_update(self, batch: Batch) -> dict[str, float]:
        """`update` by autograd on `terms` and `discriminator_loss` (the reference path)."""
        assert self.optimizer is not None and self.disc_optimizer is not None, "configure_optimizer first"
        self.optimizer.zero_grad(set_to_none=True)
        t, tc_z = self.terms(batch)
        loss = self.combine(t)
        loss.backward()
        optimizer_step(self.optimizer)
        # The main backward left TC gradients on D; its own step must start from zero.
        self.disc_optimizer.zero_grad(set_to_none=True)
        d_loss = self.discriminator_loss(tc_z)
        d_loss.backward()
        optimizer_step(self.disc_optimizer)
        logs = {k: float(v.detach()) for k, v in t.items()}
        return {"loss": float(loss.detach()), **logs, "disc": float(d_loss.detach())}
