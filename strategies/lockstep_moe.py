r"""MOE's objective in lockstep (`strategies.lockstep`): the whole mixture is one linear map.

Every parameter of `strategies.moe.MoE` acts linearly on the features: the gate's logits
:math:`a = W_g x + b_g` (E) and the experts' logits :math:`e_k = W_k x + b_k` (E × C) are
the rows of one (E + E·C, d + 1) ``[weight | bias]`` matrix (`MoE.linear_map`), so the
lockstep engine's two batched matmuls serve it as they serve a probe. Only the gradient of
the loss w.r.t. those logits differs. With gate :math:`\alpha = \mathrm{softmax}(a)`, expert
class probabilities :math:`p_k = \mathrm{softmax}(e_k)`, mixture
:math:`p_{mix} = \sum_k \alpha_k p_k` and responsibilities
:math:`r_k = \alpha_k p_k(y) / p_{mix}(y)`, a row with label *y*, site *d*, class weight
:math:`w_y` and batch size *n* contributes

.. math::

    \frac{\partial \mathcal L}{\partial a} = \frac{w_y}{n}(\alpha - r)
        + \frac{\lambda_{gate}}{n}(\alpha - e_d), \qquad
    \frac{\partial \mathcal L}{\partial e_k} = \frac{w_y}{n}\big(r_k
        + \lambda_{expert}[k = d]\big)(p_k - e_y),

the derivatives of the mixture WCE, the gate's CE on the site and the own-site expert WCE
of `MoE.objective` (:math:`e_d, e_y` one-hot vectors).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from strategies.base import Method, MethodConfig, TaskSpec
from strategies.core import ArrayData


@dataclass(frozen=True)
class MoeSpec:
    """What MOE's logit gradient needs beyond the labels.

    Attributes
    ----------
    domains : Tensor
        (n,) int64 site of every row (its expert).
    n_experts : int
        E, the number of sites.
    lambda_gate, lambda_expert : float
        Weights of the gate's and the own-site expert's terms.
    """

    domains: Tensor
    n_experts: int
    lambda_gate: float
    lambda_expert: float


def moe_spec(cls: type[Method], data: ArrayData, config: MethodConfig, spec: TaskSpec) -> MoeSpec | None:
    """MOE's sites and weights when ``cls`` declares ``lockstep = "moe"``, else None."""
    if vars(cls).get("lockstep") != "moe":
        return None
    domains = torch.from_numpy(data.domain.astype(np.int64))
    if domains.numel() and int(domains.max()) >= spec.n_domains:
        raise ValueError(f"domain codes reach {int(domains.max())}; "
                         f"expected fewer than {spec.n_domains} sites")
    # A plain MethodConfig (a generic caller) gets MoE's defaults, as `MoE.__init__` does.
    lam = (float(getattr(config, k, getattr(cls.config_cls, k))) for k in ("lambda_gate", "lambda_expert"))
    return MoeSpec(domains, spec.n_domains, *lam)


def moe_plan(moe: MoeSpec, idx: Tensor, inv: Tensor) -> Tensor:
    """(steps, F, B, 1, E) one-hot site of every gathered row times ``1 / n`` (0 for padding).

    Parameters
    ----------
    moe : MoeSpec
        The sites.
    idx : Tensor
        (steps, F, B) gathered rows.
    inv : Tensor
        (steps, F, B) one over the row's batch size, 0 for padding.
    """
    onehot = torch.nn.functional.one_hot(moe.domains[idx], moe.n_experts).float()
    return (onehot * inv[..., None])[..., None, :]


def mixture(z: Tensor, n_experts: int) -> tuple[Tensor, Tensor, Tensor]:
    """Log gate, expert log-probabilities and the mixture's log-probabilities of logits ``z``.

    Parameters
    ----------
    z : Tensor
        (..., E + E·C) logits in `MoE.linear_map` row order.
    n_experts : int
        E.

    Returns
    -------
    tuple of Tensor
        (..., E), (..., E, C) and (..., C).
    """
    log_gate = torch.log_softmax(z[..., :n_experts], dim=-1)
    log_p = torch.log_softmax(z[..., n_experts:].unflatten(-1, (n_experts, -1)), dim=-1)
    return log_gate, log_p, torch.logsumexp(log_gate[..., None] + log_p, dim=-2)


def _log_softmax(a: np.ndarray) -> np.ndarray:
    shifted = a - a.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def moe_grad(moe: MoeSpec, z: np.ndarray, onehot: np.ndarray, w: np.ndarray, dom: np.ndarray) -> np.ndarray:
    r"""Logit gradient (F, B, L, E + E·C) of MOE's loss, in numpy.

    A few thousand numbers per step, where each torch call costs microseconds of
    dispatch: numpy on the epoch plan's views, as the lockstep products are. The
    responsibilities are a softmax over experts of :math:`\log\alpha_k + \log p_k(y)`.

    Parameters
    ----------
    moe : MoeSpec
        Sites and loss weights.
    z : numpy.ndarray
        (F, B, L, E + E·C) logits.
    onehot : numpy.ndarray
        (F, B, 1, C) one-hot labels.
    w : numpy.ndarray
        (F, B, 1) class weight of each row's label over its batch size (0 for padding).
    dom : numpy.ndarray
        (F, B, 1, E) this step's `moe_plan` entry.
    """
    e = moe.n_experts
    log_gate = _log_softmax(z[..., :e])
    log_p = _log_softmax(z[..., e:].reshape(*z.shape[:-1], e, -1))
    label = onehot[..., None, :]
    resp = np.exp(_log_softmax(((log_gate[..., None] + log_p) * label).sum(-1)))  # (F, B, L, E)
    gate = np.exp(log_gate)
    wr = w[..., None]
    d_gate = wr * (gate - resp) + moe.lambda_gate * (gate * dom.sum(-1, keepdims=True) - dom)
    scale = wr * resp + (moe.lambda_expert * wr) * (dom > 0)
    d_expert = scale[..., None] * (np.exp(log_p) - label)
    return np.concatenate([d_gate, d_expert.reshape(*d_expert.shape[:-2], -1)], axis=-1)
