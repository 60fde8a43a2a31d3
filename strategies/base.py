"""The method interface every strategy file implements, and the registry.

A method (DomainBed's ``Algorithm``, in spirit) is a `torch.nn.Module` with a local
objective on one batch of (features, label, domain, subgroup) and a prediction; the
training core (`strategies.core`) calls nothing else, so pooled and federated training
share it. A method registers itself with `register`; nothing outside its file names it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import ClassVar, TypeVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812

from strategies.fused_adam import optimizer_step


@dataclass(frozen=True)
class TaskSpec:
    """What a method needs to know about the data it will see.

    Attributes
    ----------
    in_dim : int
        Feature dimension of the FM.
    n_classes : int
        Classes of the task (all of them, also those absent from this training set).
    n_domains : int
        Number of domains (training sites, or sensitive-attribute groups).
    class_weights : tuple of float
        Weight of each class in the weighted cross-entropy (0 for absent classes).
    n_groups : int
        Number of subgroups of the method's sensitive attribute (``Batch.group``);
        equals ``n_domains`` when the attribute is the site.
    """

    in_dim: int
    n_classes: int
    n_domains: int
    class_weights: tuple[float, ...]
    n_groups: int = 0

    def __post_init__(self) -> None:
        if self.n_groups == 0:
            object.__setattr__(self, "n_groups", self.n_domains)


@dataclass(frozen=True)
class Batch:
    """One minibatch: features, labels, domain (site) and subgroup indices.

    ``group`` holds codes of the method's sensitive attribute (``MethodConfig.sensitive``);
    ``-1`` marks a row whose attribute is unknown, which group terms must ignore.
    """

    x: Tensor
    y: Tensor
    domain: Tensor
    group: Tensor


@dataclass(frozen=True)
class MethodConfig:
    """Optimisation defaults and the hyperparameter search space (paper §3).

    Defaults are the paper's protocol: batch size {8, 16, 32} × learning rate
    {1e-3, 1e-4, 1e-5}, 3-fold CV, 20 epochs per candidate, 50 epochs to retrain.
    ``searchable=False`` fixes ``batch_size``/``lr``/``epochs`` (FADES in the paper).
    ``sensitive`` selects the attribute behind ``Batch.group``: the site (the paper's
    domain), ``density`` or ``age_band``. ``weight_decay`` is the L2 penalty (the
    paper names none: 0 by default). ``optimizer`` is ``adam`` (ours; the paper names
    none) or ``sgd`` (plain gradient descent, e.g. to compare FedAvg with pooled GD).
    """

    batch_size: int = 32
    lr: float = 1e-3
    epochs: int = 50
    search_epochs: int = 20
    batch_sizes: tuple[int, ...] = (8, 16, 32)
    lrs: tuple[float, ...] = (1e-3, 1e-4, 1e-5)
    searchable: bool = True
    sensitive: str = "site"
    weight_decay: float = 0.0
    optimizer: str = "adam"


class Method(nn.Module):
    """Base class of all methods.

    Subclasses set ``config_cls``, build their modules in ``__init__`` and implement
    `objective` and `forward` (class logits). `update` is one optimiser step on a batch.
    """

    name: ClassVar[str] = ""
    #: Row label in tables (the paper's spelling); defaults to the registered name.
    label: ClassVar[str] = ""
    config_cls: ClassVar[type[MethodConfig]] = MethodConfig
    #: Train with denormal floats flushed to zero (`strategies.denormals`): for methods
    #: whose hidden units can stop receiving gradient.
    flush_denormals: ClassVar[bool] = False

    def __init__(self, spec: TaskSpec, config: MethodConfig) -> None:
        super().__init__()
        self.spec = spec
        self.config = config
        self.register_buffer("class_weights", torch.tensor(spec.class_weights, dtype=torch.float32))
        self.optimizer: torch.optim.Optimizer | None = None

    def configure_optimizer(self, lr: float) -> None:
        """Create the optimiser named by the config once the modules exist."""
        input_major_(self, self.spec.in_dim)
        self.optimizer = make_optimizer(self.parameters(), self.config, lr)

    def begin_epoch(self, progress: float) -> None:
        """Hook called before each epoch with training progress in [0, 1)."""

    def begin_round(self, config: dict[str, object]) -> None:
        """Hook called on a federated client after the global model is loaded."""

    def round_metrics(self) -> dict[str, float]:
        """Extra scalars a federated client reports after its local update."""
        return {}

    def objective(self, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        """Return the loss to minimise on ``batch`` and scalar logs."""
        raise NotImplementedError

    def update(self, batch: Batch) -> dict[str, float]:
        """Take one optimiser step on ``batch``; returns the objective's logs."""
        assert self.optimizer is not None, "call configure_optimizer first"
        self.optimizer.zero_grad(set_to_none=True)
        loss, logs = self.objective(batch)
        loss.backward()
        optimizer_step(self.optimizer)
        return logs


def make_optimizer(params: Iterable[nn.Parameter], config: MethodConfig, lr: float) -> torch.optim.Optimizer:
    """Adam or plain SGD over ``params`` with the config's weight decay.

    Adam is torch's fused kernel: probes take thousands of tiny steps, where the per-tensor
    Python loop of the default implementation costs more than the arithmetic (≈ 2.4×
    faster for a 2048→256 MLP on one CPU thread).
    """
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=config.weight_decay, fused=True)
    raise ValueError(f"unknown optimizer {config.optimizer!r}; expected 'adam' or 'sgd'")


def softmax_cross_entropy(logits: Tensor, target: Tensor, row_weight: Tensor) -> tuple[Tensor, Tensor]:
    r"""Weighted cross-entropy :math:`\sum_i r_i \ell_{CE}(z_i, t_i)` and its gradient w.r.t. the logits.

    For methods that write their gradients by hand: the gradient is
    :math:`r_i(\mathrm{softmax}(z_i) - e_{t_i})`. With :math:`r_i = w_{t_i}/N` this is
    `weighted_cross_entropy`.
    """
    t1 = target[:, None]
    log_p = torch.log_softmax(logits, dim=1)
    picked = log_p.gather(1, t1)
    loss = -torch.dot(row_weight, picked.view(-1))
    # scatter_add_ rather than indexed assignment: fewer ops, as this runs every step.
    grad = log_p.exp_().scatter_add_(1, t1, torch.full_like(picked, -1.0))
    return loss, grad.mul_(row_weight[:, None])


#: Outputs from which `input_major_` pays (measured at batch 8–32, 512- and 2048-wide inputs).
MIN_INPUT_MAJOR = 64


def input_major_(module: nn.Module, in_dim: int) -> None:
    """Store the weight of each wide Linear that reads the features (``in_dim`` inputs) as (in, out).

    The parameter keeps its (out, in) shape and values; only its memory order changes,
    so ``x @ weight.T`` is a plain product. torch's CPU GEMM runs that product 1.5–2.7×
    faster at batch 8–32 than on an (out, in)-ordered weight (e.g. 100 against 275 µs
    for 32 × 2048 → 128 on one thread), and the weight gradient no slower, from 64
    outputs up (`MIN_INPUT_MAJOR`; a narrow probe's products run faster as they are).
    The layout's cost falls on the input gradient ``d @ weight``, which a layer reading
    frozen features never needs. Gradients and Adam's moments follow the parameter's
    strides (autograd and ``zeros_like`` keep them; `strategies.fused_adam` runs them
    in memory order), and state dicts load and serialise through copies, so nothing
    else sees the change. Applied before the optimiser exists; a second call is a no-op.
    """
    for layer in module.modules():
        if isinstance(layer, nn.Linear) and layer.in_features == in_dim \
                and layer.out_features >= MIN_INPUT_MAJOR and layer.weight.is_contiguous():
            layer.weight.data = layer.weight.data.t().contiguous().t()


def grad_buffer(p: Tensor) -> Tensor:
    """``p``'s gradient, created once and then overwritten in place step after step.

    Autograd allocates every gradient afresh each step (2 MB for a 2048 → 256 layer);
    hand-written updates write into these buffers instead.
    """
    if p.grad is None:
        p.grad = torch.zeros_like(p)
    return p.grad


def relu_backward_(grad: Tensor, output: Tensor) -> Tensor:
    """``grad * (output > 0)`` in place: the gradient through a ReLU with output ``output``.

    torch's ReLU-backward kernel: multiplying by the boolean mask instead converts it
    element by element, 4 against 18 µs for a (32, 256) batch on one CPU thread.
    """
    return torch.ops.aten.threshold_backward.grad_input(grad, output, 0, grad_input=grad)


def linear_grads(layer: nn.Linear, d_out: Tensor, inp: Tensor) -> None:
    """Write a linear layer's weight and bias gradients given dL/d(output) and its input."""
    torch.mm(d_out.T, inp, out=grad_buffer(layer.weight))
    torch.sum(d_out, 0, out=grad_buffer(layer.bias))


def weighted_cross_entropy(logits: Tensor, y: Tensor, weights: Tensor) -> Tensor:
    r"""The paper's weighted cross-entropy, :math:`\frac1N \sum_i w_{y_i} \ell_i`.

    Notes
    -----
    The paper (§2) averages over N, not over the weights' sum as
    ``F.cross_entropy(weight=...)`` does; the two differ by a constant factor per batch.
    """
    return (weights[y] * F.cross_entropy(logits, y, reduction="none")).mean()


def known_group_cross_entropy(logits: Tensor, group: Tensor) -> Tensor:
    """Mean cross-entropy over rows with a known group (``group >= 0``); 0 when none.

    Parameters
    ----------
    logits : Tensor
        Group logits (n, n_groups).
    group : Tensor
        Group codes (n,), ``-1`` where unknown.

    Returns
    -------
    Tensor
        Scalar loss.
    """
    known = group >= 0
    # Clamping gives unknown rows a valid index; the mask then zeroes their term, and
    # avoiding boolean indexing keeps shapes static (no host sync on a GPU).
    per_row = F.cross_entropy(logits, group.clamp(min=0), reduction="none")
    return (per_row * known).sum() / known.sum().clamp(min=1)


def seed_torch(seed: int) -> None:
    """Seed torch's CPU generator, as ``torch.manual_seed`` does for the CPU.

    ``torch.manual_seed`` also queues seeding of every accelerator backend, capturing a
    stack trace for each (≈ 0.1 ms): paid per client message in a federation. Probes
    train on the CPU, so the CPU generator is all their runs draw from.
    """
    torch.default_generator.manual_seed(seed)


REGISTRY: dict[str, type[Method]] = {}
M = TypeVar("M", bound=type[Method])


def register(name: str) -> Callable[[M], M]:
    """Class decorator adding a method to `REGISTRY` under ``name``."""

    def wrap(cls: M) -> M:
        if name in REGISTRY and REGISTRY[name] is not cls:
            raise ValueError(f"method {name!r} registered twice")
        cls.name = name
        cls.label = cls.__dict__.get("label") or name
        REGISTRY[name] = cls
        return cls

    return wrap


def get_method(name: str) -> type[Method]:
    """Look a method up by name, listing the known ones on a miss."""
    from strategies import load_all  # the registry fills on import of the method files

    load_all()
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; registered: {sorted(REGISTRY)}") from None
