r"""Stacked search runs for methods with a hand-written step: a fold's learning rates at once.

The paper's search trains every (batch size, learning rate) on every fold. The runs of
one fold and batch size differ only in their learning rate: they start from the same
weights and see the same minibatches. Here they train together: each parameter and
buffer is one tensor with a leading run axis (L learning rates), a step is one gathered
minibatch, one call of the method's stacked gradient (batched matmuls over the runs,
the first layer's products sharing the batch) and one compiled Adam update of every run
(`StackedAdam`). A step of these methods costs a few dozen small operations whose
overhead at batch 8–32 rivals their arithmetic; stacked, it is paid once for L runs, and
the steps keep it low (`strategies.stacked_layers`): their products write into tensors
made once per run, and the rows are gathered into the same tensors each step. (Stacking
the folds as well was slower on a 2-core machine: nine runs' weights and Adam moments no
longer stay in cache between steps.)

The runs are the per-config path's (`strategies.core.train`): the same initial weights
(the method built right after seeding ``seed + f``), per-epoch permutations (a generator
seeded likewise), last partial batch, epoch hooks (``begin_epoch``) and Adam update;
only float rounding differs. Over a 20-epoch search that rounding can still move a run at
the largest learning rate (1e-3), where DANN's and FairDisCO's training is chaotic: on a
Table-2 pool at a tenth of its size such runs' validation accuracies differed from the
per-config path's by up to 0.065 either way, the other runs' by less than 0.01, and both
paths chose the same candidate.

Every 2-D weight is held transposed, ``(L, in, out)``: a batch times a weight stored
that way is a plain product, which torch's CPU GEMM runs about twice as fast at batch
8–32 as the ``(out, in)`` layout of `nn.Linear`.

A method opts in by setting ``stacked_step`` on its class: a function
``(model, state, grads, batch)`` that writes the gradient of its loss for every run into
``grads`` (the parameters' keys) and updates any buffers in ``state`` (e.g. BatchNorm's
running statistics), where ``state`` maps the model's state-dict keys to stacked tensors
(weights transposed as above) and ``model`` is an instance whose ``begin_epoch`` has set
the epoch's state (e.g. DANN's λ). It returns the names of parameters it left without a
gradient this step (Adam skips them), or None. The batch's tensors are overwritten by
the next step's rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from strategies.base import Method, MethodConfig, TaskSpec, get_method, seed_torch
from strategies.core import ArrayData, HParams, make_spec, predict
from strategies.denormals import flush_denormals
from strategies.lockstep_update import SegmentAdam

StepFn = Callable[[Method, dict[str, Tensor], dict[str, Tensor], "StackedBatch"], "tuple[str, ...] | None"]


@dataclass(frozen=True)
class StackedBatch:
    """One step's rows, shared by the stacked runs.

    Attributes
    ----------
    x : Tensor
        (B, d) features.
    y : Tensor
        (B,) int64 labels.
    w : Tensor
        (B,) each row's class weight over the batch size (`weighted_cross_entropy`'s).
    group : Tensor
        (B,) int64 sensitive-attribute codes, ``-1`` where unknown.
    """

    x: Tensor
    y: Tensor
    w: Tensor
    group: Tensor


def supports_stacked(cls: type[Method], config: MethodConfig) -> bool:
    """Whether ``cls`` has a stacked step and ``config`` trains with Adam (the fused update)."""
    return getattr(cls, "stacked_step", None) is not None and config.optimizer == "adam"


def cv_rows_stacked(
    method: str, data: ArrayData, n_classes: int, n_domains: int, config: MethodConfig,
    splits: list[tuple[np.ndarray, np.ndarray]], seed: int,
) -> list[dict[str, float]]:
    """`strategies.protocol.search`'s CV table, each fold's learning rates trained stacked.

    Parameters and rows as `strategies.lockstep.cv_rows` (``method`` one with a
    ``stacked_step``; fold ``f`` trains with seed ``seed + f``, as in the per-config path).
    """
    cls = get_method(method)
    acc = {}
    for f, (tr, va) in enumerate(splits):
        part = data.take(tr)
        spec = make_spec(part, n_classes, n_domains, config.sensitive)
        for bs in config.batch_sizes:
            states = train_stacked(cls, part, spec, config, tuple(config.lrs), bs, config.search_epochs,
                                   seed + f)
            for lr, state in zip(config.lrs, states, strict=True):
                model = cls(spec, config)
                model.load_state_dict(state)
                acc[bs, lr, f] = float((predict(model.eval(), data.x[va]) == data.y[va]).mean())
    return [{"batch_size": bs, "lr": lr, "fold": f, "accuracy": acc[bs, lr, f]}
            for bs in config.batch_sizes for lr in config.lrs for f in range(len(splits))]


def train_stacked(cls: type[Method], data: ArrayData, spec: TaskSpec, config: MethodConfig,
                  lrs: tuple[float, ...], bs: int, epochs: int, seed: int) -> list[dict[str, Tensor]]:
    """Train ``cls`` on ``data`` at every learning rate of ``lrs`` together; one state dict per lr.

    Each is what ``train(method, data, spec, config, HParams(bs, lr, epochs), seed)`` returns.
    """
    return _train_stacked(cls, data, spec, config, lrs, bs, epochs, seed)[1]


def _train_stacked(cls: type[Method], data: ArrayData, spec: TaskSpec, config: MethodConfig,
                   lrs: tuple[float, ...], bs: int, epochs: int, seed: int
                   ) -> tuple[Method, list[dict[str, Tensor]]]:
    """`train_stacked`, also returning the model instance whose epoch hooks ran (e.g. DANN's λ)."""
    seed_torch(seed)
    model = cls(spec, config)
    state = {k: _stack(v, len(lrs)) for k, v in model.state_dict().items()}
    names = [n for n, _ in model.named_parameters()]
    adam = StackedAdam({k: state[k] for k in names}, lrs, config.weight_decay)
    state |= adam.params  # the parameters live in the optimizer's flat buffer from here on
    x = torch.from_numpy(np.ascontiguousarray(data.x, dtype=np.float32))
    y = torch.from_numpy(data.y.astype(np.int64))
    group = torch.from_numpy(data.group_index(config.sensitive).astype(np.int64))
    w = model.class_weights[y]
    gen, n = torch.Generator().manual_seed(seed), len(data)
    step: StepFn = cls.stacked_step
    gather = _Gather(x, y, w, group, bs)
    model.train()
    with flush_denormals(cls.flush_denormals):
        for epoch in range(epochs):
            model.begin_epoch(epoch / max(epochs, 1))
            perm = torch.randperm(n, generator=gen).numpy()
            for i in range(0, n, bs):
                adam.step(step(model, state, adam.grads, gather(perm[i : i + bs])) or ())
    return model, [{k: _unstack(v, j) for k, v in state.items()} for j in range(len(lrs))]


class _Gather:
    """Minibatches gathered into the same tensors step after step, as `strategies.core.fit_epochs` draws them.

    One compiled pass (`strategies._stacked_kernels.gather_rows_`) where four
    ``index_select`` calls and a division each started cold after the previous step's
    Adam pass; the step's tensors also keep their identity, so its scratch views
    (`strategies.stacked_layers.Scratch`) stay valid. A batch holds until the next call.
    """

    def __init__(self, x: Tensor, y: Tensor, w: Tensor, group: Tensor, bs: int) -> None:
        self.src = tuple(t.numpy() for t in (x, y, w, group))
        self.full = StackedBatch(torch.empty(bs, x.shape[1]), torch.empty(bs, dtype=torch.int64),
                                 torch.empty(bs), torch.empty(bs, dtype=torch.int64))
        self.out = tuple(t.numpy() for t in (self.full.x, self.full.y, self.full.w, self.full.group))
        self.batches = {bs: self.full}

    def __call__(self, idx: np.ndarray) -> StackedBatch:
        """The rows ``idx`` (int64)."""
        from strategies._stacked_kernels import gather_rows_

        m = len(idx)
        gather_rows_(*self.src, idx, *(a[:m] for a in self.out))
        batch = self.batches.get(m)
        if batch is None:  # the epoch's last, partial batch: the first m rows of the same tensors
            f = self.full
            batch = self.batches[m] = StackedBatch(f.x[:m], f.y[:m], f.w[:m], f.group[:m])
        return batch


def train_one_stacked(cls: type[Method], data: ArrayData, spec: TaskSpec, config: MethodConfig,
                      hp: HParams, seed: int) -> Method:
    """`strategies.core.train` of ``cls`` on the stacked path, as a single run; the model in eval mode.

    The same model as the per-config path up to float rounding, and about a tenth faster
    at batch 8–32: the weights are held ``(in, out)`` and the step has no module calls.
    """
    model, (state,) = _train_stacked(cls, data, spec, config, (hp.lr,), hp.batch_size, hp.epochs, seed)
    model.load_state_dict(state)  # the instance keeps its last epoch's state, as `train`'s does
    return model.eval()


def _stack(t: Tensor, runs: int) -> Tensor:
    """``runs`` copies of a state entry, 2-D weights transposed to (in, out)."""
    t = t.detach().T if t.dim() == 2 else t.detach()
    return t.expand(runs, *t.shape).clone(memory_format=torch.contiguous_format)


def _unstack(t: Tensor, j: int) -> Tensor:
    """Run ``j``'s entry in the model's own layout."""
    return (t[j].T if t.dim() == 3 else t[j]).clone()


#: Floats in a 64-byte cache line.
_ALIGN = 16


class StackedAdam:
    """Adam on stacked runs: each run's slice of each parameter is a segment of one flat buffer.

    One compiled call (`strategies.lockstep_update.SegmentAdam`) updates every run at its
    own learning rate. ``params`` and ``grads`` map the parameters' names to views of the
    flat buffers, the layout (L, ...) the stacked steps use. Each segment keeps its own
    step count: a step that leaves some parameters without a gradient (FairDisCO's
    projection head on a one-row batch) skips them, as ``torch.optim.Adam`` skips
    parameters whose ``grad`` is None.
    """

    def __init__(self, params: dict[str, Tensor], lrs: tuple[float, ...], weight_decay: float) -> None:
        runs = len(lrs)
        sizes = [p.numel() for p in params.values()]
        # Each parameter starts on a 64-byte line, as a tensor of its own would: MKL's
        # products on a misaligned weight or gradient ran up to a fifth slower.
        offsets = np.cumsum([0, *(-(-n // _ALIGN) * _ALIGN for n in sizes)]).tolist()
        segments = [(o + j * (n // runs), n // runs, lr)
                    for o, n in zip(offsets, sizes, strict=False) for j, lr in enumerate(lrs)]
        flat = torch.zeros(offsets[-1])
        for p, o in zip(params.values(), offsets, strict=False):
            flat[o : o + p.numel()] = p.reshape(-1)
        self.adam = SegmentAdam(flat, segments, weight_decay)
        self.params, self.grads = ({k: t[o : o + p.numel()].view(p.shape)
                                    for (k, p), o in zip(params.items(), offsets, strict=False)}
                                   for t in (self.adam.p, self.adam.g))
        self.runs = runs
        self._active: dict[tuple[str, ...], np.ndarray] = {(): self.adam.every}

    def step(self, skip: tuple[str, ...] = ()) -> None:
        """Every run's update with its own learning rate, except for the parameters in ``skip``."""
        active = self._active.get(skip)
        if active is None:
            keep = np.array([k not in skip for k in self.params]).repeat(self.runs)
            active = self._active[skip] = self.adam.every[keep]
        self.adam.step(active)
