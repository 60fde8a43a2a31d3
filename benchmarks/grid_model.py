"""Measurements and counts behind `bench_grid.py`: GEMM rate, step floors, FLOPs per method."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch import Tensor, nn

from strategies import base, load_all
from strategies import lockstep as ls
from strategies.base import REGISTRY, Batch, MethodConfig, TaskSpec
from strategies.core import ArrayData, gather_batch, make_spec
from strategies.lockstep_update import SegmentAdam
from strategies.stacked import StackedAdam, train_stacked

#: Feature width of each paper FM.
DIMS = {"mammoclip": 2048, "medclip": 512, "gloria": 2048, "clip": 512, "dinov2": 384}


def gemm_gflops(n: int = 2048, repeats: int = 5) -> float:
    """fp32 GEMM throughput (GFLOP/s) of an ``n``-square product, median of ``repeats``."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


def lean_step_seconds(dim: int, n_classes: int, bs: int, steps: int = 600, n: int = 16384) -> float:
    """Seconds of one lean fused update: a single probe run on `strategies.lockstep`'s step.

    Batches are drawn from ``n`` rows (Table-2 scale), so each step fetches its rows from
    memory as a real run does rather than from cache.
    """
    rng = np.random.default_rng(0)
    x = ls.augment(rng.standard_normal((n, dim), dtype=np.float32))
    y = torch.from_numpy(rng.integers(0, n_classes, n))
    rows = np.random.default_rng(1).choice(n, bs * steps, replace=bs * steps > n)
    group = ls.RunGroup([rows], torch.ones(1, n_classes), torch.zeros(1, n_classes, dim + 1),
                        [0], (1e-3,), bs, 1)
    warm = ls.RunGroup([np.arange(bs * 20)], group.class_weights, group.init, [0], (1e-3,), bs, 1)
    ls.train_group(x, y, warm, MethodConfig())
    t0 = time.perf_counter()
    ls.train_group(x, y, group, MethodConfig())
    return (time.perf_counter() - t0) / steps


def update_seconds(name: str, dim: int, n_classes: int, bs: int, steps: int = 150) -> float:
    """Seconds per ``update`` of method ``name`` on the per-config path (after a warm-up).

    As `strategies.core.fit_epochs` runs it: each step gathers its batch from ``bs × steps``
    random rows, so it fetches them from memory as a real run does.
    """
    cls = REGISTRY[name]
    torch.manual_seed(0)
    model = cls(TaskSpec(dim, n_classes, 8, (1.0,) * n_classes), cls.config_cls())
    model.configure_optimizer(1e-3)
    model.begin_epoch(0.5)
    rng = np.random.default_rng(0)
    n = bs * steps
    x = torch.from_numpy(rng.standard_normal((n, dim), dtype=np.float32))
    y, domain = torch.from_numpy(rng.integers(0, n_classes, n)), torch.from_numpy(rng.integers(0, 8, n))
    perm = torch.randperm(n)
    for i in range(4):
        model.update(Batch(x[i * bs:(i + 1) * bs], y[:bs], domain[:bs], domain[:bs]))
    t0 = time.perf_counter()
    for i in range(steps):
        model.update(gather_batch((x, y, domain, domain), perm[i * bs:(i + 1) * bs]))
    return (time.perf_counter() - t0) / steps


def stacked_step_seconds(name: str, dim: int, n_classes: int, bs: int, steps: int = 200, runs: int = 3
                         ) -> float:
    """Seconds per step of ``runs`` of a fold's learning rates trained stacked (`strategies.stacked`).

    One epoch of ``steps`` batches over ``bs × steps`` random rows (so each step fetches
    its rows from memory, as a real run does), after a short warm-up.
    """
    cls = REGISTRY[name]
    config = cls.config_cls()
    rng = np.random.default_rng(0)
    n = bs * steps
    data = ArrayData(rng.standard_normal((n, dim), dtype=np.float32), rng.integers(0, n_classes, n),
                     rng.integers(0, 8, n), np.arange(n))
    spec = make_spec(data, n_classes, 8, config.sensitive)
    lrs = tuple(config.lrs)[:runs]
    train_stacked(cls, data.take(np.arange(bs * 10)), spec, config, lrs, bs, 1, 0)
    t0 = time.perf_counter()
    train_stacked(cls, data, spec, config, lrs, bs, 1, 0)
    return (time.perf_counter() - t0) / steps


def warm_stacked_seconds(args: tuple[str, int, int, int]) -> tuple[float, float]:
    """(extra seconds of a first 20 steps, steady seconds per step) of a stacked search loop.

    ``args``: (method, dim, classes, batch) of `stacked_step_seconds`. A fresh process's
    first steps also load the compiled kernels; `bench_grid` compares workers once warm
    (`fedgrid_model.parallel_slowdown`).
    """
    name, dim, n_classes, bs = args
    load_all()  # a spawned worker has not registered the methods yet
    first = stacked_step_seconds(name, dim, n_classes, bs, steps=20)
    steady = statistics.median(stacked_step_seconds(name, dim, n_classes, bs) for _ in range(3))
    return 20 * (first - steady), steady


def linear_macs(name: str, dim: int, n_classes: int) -> int:
    """Multiply-adds per sample of one forward pass: the method's weight matrices.

    Every parameter with two or more axes is a weight applied to each sample once
    (`nn.Linear` weights, and MOE's stacked (E, C, d) experts); vectors (biases, norms)
    are not counted.
    """
    cls = REGISTRY[name]
    model = cls(TaskSpec(dim, n_classes, 8, (1.0,) * n_classes), cls.config_cls())
    return sum(p.numel() for p in model.parameters() if p.dim() >= 2)


def lockstep_width(name: str, dim: int, n_classes: int) -> int:
    """Rows of a lockstep method's ``[weight | bias]`` map (the classes for a probe)."""
    cls = REGISTRY[name]
    return ls.linear_weights(cls(TaskSpec(dim, n_classes, 8, (1.0,) * n_classes), cls.config_cls())).shape[0]


def pair_flops(name: str, dim: int, n_classes: int, bs: int) -> int:
    """FLOPs per step of a method's products on all N² pairs of a batch (FADES' CMI term).

    FADES evaluates its label and sensitive heads on every pair ``[z_a^(i), z_r^(j)]``
    with gradients to the latents: each head's second layer (h → K) forward and its
    input gradient on N² rows, counted with K − 1 outputs (the softmax ignores a shift
    common to all classes, so class 0 need not be computed), and its first layer split
    into the two latents' halves, forward and input gradient on N rows each. Other
    methods have none.
    """
    if name != "fades":
        return 0
    cls = REGISTRY[name]
    model = cls(TaskSpec(dim, n_classes, 8, (1.0,) * n_classes), cls.config_cls())
    total = 0
    for head in (model.head_y, model.head_s):
        first, second = (m for m in head.modules() if isinstance(m, nn.Linear))
        total += 2 * 2 * bs * bs * second.in_features * (second.out_features - 1)
        total += 2 * 2 * bs * first.in_features * first.out_features
    return total


def kernel_seconds(name: str, dim: int, n_classes: int, bs: int, steps: int = 100,
                   gflops: float | None = None) -> float:
    """Seconds per step of a method's unavoidable kernels, issued back to back.

    For every weight matrix W (out × in) of the method: the forward GEMM of a batch, the
    weight-gradient GEMM and, unless the matrix reads the features themselves (``in ==
    dim``), the input-gradient GEMM that carries the gradient to the layer below; then
    one Adam update of all its parameters (`strategies.stacked.StackedAdam`'s compiled
    call, faster than torch's fused Adam). No autograd, no loss, no activations: what
    any implementation of one step of the method must at least run, measured on this
    machine (small-batch GEMMs and the optimizer's memory traffic, which a FLOP count
    misses). Each matrix is in the memory order training keeps it in (`_ordered`), the
    faster one for its products. Given the GEMM rate ``gflops``, method-specific
    products on all N² pairs of a batch (`pair_flops`) are added at that rate, no faster
    than any implementation could run them; without it they are left out.
    """
    cls = REGISTRY[name]
    torch.manual_seed(0)
    model = cls(TaskSpec(dim, n_classes, 8, (1.0,) * n_classes), cls.config_cls())
    # One run of the stacked engine's Adam (one compiled call, the parameters in one flat
    # buffer, each on its own cache line): the fastest Adam this project has.
    adam = StackedAdam({str(i): p.detach()[None] for i, p in enumerate(model.parameters())}, (1e-3,), 0.0)
    for g in adam.grads.values():
        g.copy_(torch.randn_like(g) * 1e-3)
    # The weight gradients go where Adam reads them, as a real step's do.
    mats, dws = ([_ordered(t[k][0].reshape(-1, t[k].shape[-1]), dim) for k in adam.params
                  if adam.params[k].dim() >= 3] for t in (adam.params, adam.grads))
    xs = [torch.randn(bs, w.shape[1]) for w in mats]
    gs = [torch.randn(bs, w.shape[0]) * 1e-3 for w in mats]
    outs = [torch.empty(bs, w.shape[0]) for w in mats]
    # A matrix that reads the features passes no gradient on: the features are frozen.
    backs = [(g, w, torch.empty(bs, w.shape[1])) for w, g in zip(mats, gs, strict=True) if w.shape[1] != dim]

    def step() -> None:
        for w, x, g, o, dw in zip(mats, xs, gs, outs, dws, strict=True):
            torch.mm(x, w.T, out=o)
            torch.mm(g.T, x, out=dw)
        for g, w, dx in backs:
            torch.mm(g, w, out=dx)
        adam.step()

    pairs = pair_flops(name, dim, n_classes, bs) / (gflops * 1e9) if gflops else 0.0
    return _per_call(step, steps) + pairs


def _ordered(w: Tensor, dim: int) -> Tensor:
    """``w`` (out × in) in the memory order a step's products run fastest in.

    A wide matrix reading the features is laid out (in, out), as
    `strategies.base.input_major_` stores it for training: the same buffer, read as its
    transpose (the values do not matter here). Others stay (out, in).
    """
    out, inp = w.shape
    if inp != dim or out < base.MIN_INPUT_MAJOR:
        return w
    return w.reshape(-1).view(inp, out).T


def _per_call(step: Callable[[], None], steps: int) -> float:
    """Seconds per call of ``step`` over ``steps`` calls, after 5 warm-up calls."""
    for _ in range(5):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) / steps


def stacked_kernel_seconds(dim: int, width: int, bs: int, folds: int, lrs: int, steps: int = 100) -> float:
    """Seconds per lockstep step of its unavoidable kernels: `kernel_seconds` for stacked runs.

    ``folds`` × ``lrs`` runs of a ``width``-row linear map over ``dim`` features (+ bias)
    advance together: per fold, the forward product of its batch with its lrs' maps and
    the weight-gradient product, then one Adam update of every run's parameters (the
    compiled `strategies.lockstep_update.SegmentAdam`, as the engine runs it).
    Every run must make its own update at every step, so this bounds the step however
    the runs are arranged (no gather, loss or Python; numpy's BLAS, the faster at these
    shapes, as `strategies.lockstep` uses).
    """
    rng = np.random.default_rng(0)
    rows = width * lrs
    q = torch.from_numpy(rng.standard_normal((folds, rows, dim + 1), dtype=np.float32) * 1e-2)
    adam = SegmentAdam(q, [(0, q.numel(), 1.0)])
    adam.g.copy_(torch.randn_like(q) * 1e-3)
    xb = rng.standard_normal((folds, bs, dim + 1), dtype=np.float32)
    dz = rng.standard_normal((folds, rows, bs), dtype=np.float32)
    z = np.empty((folds, rows, bs), np.float32)
    qn, gn = q.numpy(), adam.g.numpy()

    def step() -> None:
        np.matmul(qn, xb.transpose(0, 2, 1), out=z)
        np.matmul(dz, xb, out=gn)
        adam.step()

    with threadpool_limits(limits=1, user_api="blas"):
        return _per_call(step, steps)
