r"""Lockstep training of linear probes: every run of a grid that shares a batch size at once.

The paper's search trains 27 probes (3 batch sizes × 3 learning rates × 3 folds). On
frozen features each probe is tiny, so the per-config path (`strategies.core.train`)
spends its time in Python and optimiser overhead, one step at a time. Here the 9 runs
that share a batch size advance together: their weights are one stacked tensor, a step
is one gathered minibatch per fold, two batched matmuls (forward and the analytic
gradient of the weighted cross-entropy) and one compiled Adam update for all runs
(`strategies.lockstep_update`).

The result is the per-config path's computation, not an approximation of it: the same
folds, initial weights (drawn as `train` draws them), per-epoch permutations (one
generator per fold seeded like `train`), last partial batch, loss
(`weighted_cross_entropy`: per-row class weight over the batch size) and Adam/SGD
update; only float rounding differs. Runs of the same fold share a batch order, so a
fold's three learning rates share one gathered minibatch and one matmul.

The learning rate is folded into the parameterisation: the optimiser updates
:math:`Q = P / \eta` with unit learning rate, which moves :math:`P = \eta Q` by exactly
Adam's (or SGD's) step at learning rate :math:`\eta`. That lets one update at one rate serve
runs with different learning rates.

A method opts in with the class attribute ``lockstep = True`` (set on the class itself,
not inherited), which promises: the model is ``self.linear`` (an `nn.Linear` over the
features) trained with `weighted_cross_entropy`, no other parameters or epoch hooks.
``lockstep = "groupdro"`` promises the same probe trained on GroupDRO's robust
objective (`strategies.lockstep_dro`; the config's ``eta`` and ``sensitive``);
``lockstep = "moe"`` a mixture whose parameters are all linear maps of the features, read
and written through ``linear_map``/``load_linear_map`` (`strategies.lockstep_moe`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch import Tensor

from strategies.base import Method, MethodConfig, TaskSpec, get_method, seed_torch
from strategies.core import ArrayData, HParams, make_spec
from strategies.lockstep_dro import DroSpec, DroState, dro_spec
from strategies.lockstep_moe import MoeSpec, mixture, moe_spec
from strategies.lockstep_plan import epoch_plan, objective_grad
from strategies.lockstep_update import StackedUpdate


def supports_lockstep(cls: type[Method]) -> bool:
    """Whether method class ``cls`` itself declares ``lockstep = True``."""
    return bool(vars(cls).get("lockstep", False))


@dataclass(frozen=True)
class RunGroup:
    """Runs that train together: F folds × L learning rates at one batch size.

    Attributes
    ----------
    rows : list of numpy.ndarray
        Per fold, the training rows (indices into the feature matrix).
    class_weights : Tensor
        (F, C) class weights of each fold's training rows.
    init : Tensor
        (F, C, d + 1) initial ``[weight | bias]`` of each fold (shared by its lrs).
    seeds : list of int
        Per fold, the seed of the batch-order generator.
    lrs : tuple of float
        The learning rates (L).
    batch_size, epochs : int
        Minibatch size and number of epochs.
    dro : DroSpec, optional
        Train GroupDRO's robust objective instead of the weighted cross-entropy.
    moe : MoeSpec, optional
        Train MOE's mixture objective (``init`` rows in `MoE.linear_map` order).
    """

    rows: list[np.ndarray]
    class_weights: Tensor
    init: Tensor
    seeds: list[int]
    lrs: tuple[float, ...]
    batch_size: int
    epochs: int
    dro: DroSpec | None = None
    moe: MoeSpec | None = None


def augment(x: np.ndarray) -> Tensor:
    """Features with a trailing column of ones, so the bias is one more weight column."""
    out = torch.ones((x.shape[0], x.shape[1] + 1), dtype=torch.float32)
    out[:, :-1] = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    return out


def linear_weights(model: Method) -> Tensor:
    """``[weight | bias]`` (K, d + 1) of a lockstep-capable model's linear map."""
    if hasattr(model, "linear_map"):
        return model.linear_map()
    lin = model.linear
    return torch.cat([lin.weight.detach(), lin.bias.detach()[:, None]], dim=1).clone()


def load_linear(model: Method, wb: Tensor) -> None:
    """Write ``[weight | bias]`` (K, d + 1) into the model's linear map."""
    if hasattr(model, "load_linear_map"):
        model.load_linear_map(wb)
        return
    with torch.no_grad():
        model.linear.weight.copy_(wb[:, :-1])
        model.linear.bias.copy_(wb[:, -1])


def _order(group: RunGroup) -> tuple[list[int], list[int]]:
    """Fold slots sorted by batches per epoch (descending) and those batch counts."""
    nb = [math.ceil(len(r) / group.batch_size) for r in group.rows]
    order = sorted(range(len(nb)), key=lambda f: -nb[f])
    return order, [nb[f] for f in order]


def train_group(x: Tensor, y: Tensor, group: RunGroup, config: MethodConfig) -> Tensor:
    """Train every run of ``group`` in lockstep.

    Parameters
    ----------
    x : Tensor
        (n, d + 1) augmented features (`augment`) of all rows the folds index.
    y : Tensor
        (n,) int64 labels.
    group : RunGroup
        The runs.
    config : MethodConfig
        Supplies ``optimizer`` and ``weight_decay``.

    Returns
    -------
    Tensor
        (F, L, C, d + 1) trained ``[weight | bias]`` per fold and learning rate.
    """
    order, nbs = _order(group)
    f, lcount = len(order), len(group.lrs)
    c, d1 = group.init.shape[1:]
    # Rows are output-major (an output's L learning rates adjacent), so a step's logits
    # come out as (F, C, L, B) and the softmax runs over classes with a long inner axis:
    # torch's CPU softmax over a last axis of a few classes costs several times its arithmetic.
    lr = torch.tensor(group.lrs, dtype=torch.float32).repeat(c)
    q = (group.init[order][:, :, None] / lr.view(1, c, lcount, 1)).reshape(f, c * lcount, d1).contiguous()
    update = StackedUpdate(q, config, in_step=len(set(nbs)) == 1)
    gens = [torch.Generator().manual_seed(s) for s in group.seeds]
    dro = DroState(group.dro, f, group.lrs) if group.dro is not None else None
    # numpy's BLAS would otherwise use every core for these products, beside torch's threads.
    with threadpool_limits(limits=torch.get_num_threads(), user_api="blas"):
        for _ in range(group.epochs):
            plan = epoch_plan(group, order, gens, y, nbs[0])
            _run_epoch(x, plan, nbs, group, update, lr, config.weight_decay, dro)
    trained = (q.view(f, c, lcount, d1) * lr.view(1, c, lcount, 1)).transpose(1, 2)
    return trained[torch.tensor(order).argsort()].contiguous()


def _run_epoch(x: Tensor, plan: dict[str, Tensor], nbs: list[int], group: RunGroup, update: StackedUpdate,
               lr: Tensor, weight_decay: float, dro: DroState | None) -> None:
    """One epoch of lockstep steps (the hot loop: no allocation on the plain objective).

    The two thin products (rows × features by features × a few logits, and back) go
    through numpy's BLAS on views of the same memory: torch's CPU GEMM costs tens of
    microseconds per call at these shapes, several times numpy's (see BENCHMARKS.md).
    Between them, one compiled call (`strategies._ce_kernels`) or the objective's.
    """
    # Imported here, as `SegmentAdam` imports its kernel: only lockstep runs load numba.
    from strategies._ce_kernels import ce_logit_grad_

    idx, w, nyw = plan["idx"], plan["w"], plan["nyw"]
    q, gt = update.q, update.g
    f, b, (cl, d1) = len(nbs), group.batch_size, q.shape[1:]
    xb, z = torch.empty((f * b, d1)), torch.empty((f, cl, b))
    xn, xbn, qn, zn, gtn = x.numpy(), xb.numpy(), q.numpy(), z.numpy(), gt.numpy()
    xb3n = xbn.reshape(f, b, d1)
    xbt = xb3n.transpose(0, 2, 1)
    lrwd = (lr * weight_decay).view(1, -1, 1)
    # The loop walks numpy views of the plan: a torch view (index or unbind) costs about a
    # microsecond each, a tenth of a small step.
    ks = [sum(1 for n in nbs if n > i) for i in range(nbs[0])]
    z4 = z.view(f, -1, len(group.lrs), b)
    dz = np.empty(z4.shape, np.float32)
    dzn = dz.reshape(f, cl, b)
    z4n = z4.numpy()
    objective = objective_grad(plan, group, dro, z4n)
    lrs = np.asarray(group.lrs, dtype=np.float32)
    for i, (rows, wi, nywi) in enumerate(zip(idx.numpy(), w.numpy(), nyw.numpy(), strict=True)):
        # numpy's take writes straight into ``out`` unless mode="raise" (which buffers it);
        # the plan's rows are all in range, so "clip" never clips. Faster than index_select.
        xn.take(rows, axis=0, out=xbn, mode="clip")
        np.matmul(qn, xbt, out=zn)
        if objective is None:
            ce_logit_grad_(z4n, lrs, wi, nywi, dz)
            np.matmul(dzn, xb3n, out=gtn)
        else:  # the objective applies the learning rates itself
            np.matmul(objective(i, ks[i]), xb3n, out=gtn)
        if weight_decay:
            gt.addcmul_(q, lrwd)
        update(ks[i])


def accuracies(x: Tensor, y: Tensor, weights: Tensor, rows: list[np.ndarray],
               moe: MoeSpec | None = None) -> np.ndarray:
    """(F, L) accuracy of each run on its fold's rows ``rows[f]`` (weights (F, L, K, d + 1))."""
    out = np.zeros(weights.shape[:2])
    with torch.inference_mode():
        for f, r in enumerate(rows):
            idx = torch.from_numpy(r)
            logits = torch.einsum("nd,lcd->nlc", x[idx], weights[f])
            if moe is not None:
                logits = mixture(logits, moe.n_experts)[2]
            out[f] = (logits.argmax(-1) == y[idx][:, None]).double().mean(0).numpy()
    return out


def _fold_init(method: type[Method], spec: TaskSpec, config: MethodConfig, seed: int) -> Tensor:
    """The probe ``train`` would start from: the method built right after seeding."""
    seed_torch(seed)
    return linear_weights(method(spec, config))


def cv_rows(
    method: str, data: ArrayData, n_classes: int, n_domains: int, config: MethodConfig,
    splits: list[tuple[np.ndarray, np.ndarray]], seed: int,
) -> list[dict[str, float]]:
    """`strategies.protocol.search`'s CV table, trained in lockstep (same rows, same order).

    Parameters
    ----------
    method : str
        A lockstep-capable registered method.
    data : ArrayData
        The training split.
    n_classes, n_domains : int
        Task dimensions.
    config : MethodConfig
        Grid (``batch_sizes`` × ``lrs``), ``search_epochs``, optimiser.
    splits : list of (train rows, validation rows)
        The folds (`strategies.protocol.cv_folds`).
    seed : int
        Fold ``f`` trains with seed ``seed + f``, as in the per-config path.

    Returns
    -------
    list of dict
        One row (batch_size, lr, fold, accuracy) per candidate and fold.
    """
    cls = get_method(method)
    x, y = augment(data.x), torch.from_numpy(data.y.astype(np.int64))
    specs = [make_spec(data.take(tr), n_classes, n_domains, config.sensitive) for tr, _ in splits]
    init = torch.stack([_fold_init(cls, s, config, seed + f) for f, s in enumerate(specs)])
    cw = torch.tensor([s.class_weights for s in specs], dtype=torch.float32)
    dro, moe = dro_spec(cls, data, config, specs[0]), moe_spec(cls, data, config, specs[0])
    rows, seeds = [tr for tr, _ in splits], [seed + f for f in range(len(splits))]
    trained = [train_group(x, y, RunGroup(rows, cw, init, seeds, tuple(config.lrs), bs, config.search_epochs,
                                          dro, moe), config) for bs in config.batch_sizes]
    # Every batch size's runs scored together: each fold's validation rows are gathered once.
    acc = accuracies(x, y, torch.cat(trained, dim=1), [va for _, va in splits], moe)
    n_lr = len(config.lrs)
    return [{"batch_size": bs, "lr": lr, "fold": f, "accuracy": float(acc[f, b * n_lr + j])}
            for b, bs in enumerate(config.batch_sizes) for j, lr in enumerate(config.lrs)
            for f in range(len(splits))]


def train_model(
    method: str, data: ArrayData, spec: TaskSpec, config: MethodConfig, hp: HParams, seed: int,
) -> Method:
    """`strategies.core.train` for a lockstep-capable method, on the lean fused step."""
    seed_torch(seed)
    model = get_method(method)(spec, config)
    model.configure_optimizer(hp.lr)
    group = RunGroup([np.arange(len(data))], model.class_weights[None].clone(),
                     linear_weights(model)[None], [seed], (hp.lr,), hp.batch_size, hp.epochs,
                     dro_spec(type(model), data, config, spec), moe_spec(type(model), data, config, spec))
    x, y = augment(data.x), torch.from_numpy(data.y.astype(np.int64))
    load_linear(model, train_group(x, y, group, config)[0, 0])
    return model.eval()
