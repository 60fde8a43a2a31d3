"""Adam over a model's own parameters moved into one flat buffer: `FlatAdam`.

torch's fused CPU Adam costs about 0.9 ns per parameter and step on FADES' 0.63 M
parameters, plus some 0.1 ms of Python around it: about a sixth of FADES' update. The
compiled segment Adam of the stacked engines (`strategies.lockstep_update.SegmentAdam`)
does the same update in one call, up to the rounding of its denominator, at about
0.6 ns; it needs the parameters, gradients and moments in flat buffers, which this
optimizer arranges for an ordinary ``nn.Module``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from strategies.fused_adam import transposed
from strategies.stacked import StackedAdam


def _memory_order(p: Tensor) -> tuple[Tensor, bool]:
    """``p`` as a contiguous tensor of its elements in memory order, and whether it is ``p.T``."""
    if p.is_contiguous():
        return p.detach(), False
    if transposed(p):
        return p.detach().t(), True
    raise ValueError(f"FlatAdam takes contiguous or transposed parameters, got strides {p.stride()}")


class FlatAdam(torch.optim.Optimizer):
    """``torch.optim.Adam`` (L2 decay) on parameters moved into one flat buffer.

    Each parameter's values move into an aligned slot of a flat buffer, keeping their
    memory order (an input-major weight stays one). A gradient is copied into the
    matching slot of a gradient buffer at its first step, and ``grad`` becomes a view of
    that slot: a hand-written update that then writes ``grad`` in place
    (`strategies.base.grad_buffer`) fills the optimizer's buffer directly; autograd's
    fresh gradients are copied in at every step. A step is then one compiled call
    (`strategies.stacked.StackedAdam`) over every parameter with a gradient; one whose
    ``grad`` is None is skipped and its step count lags, as with ``torch.optim.Adam``.

    Parameters
    ----------
    params : iterable of nn.Parameter
        float32 CPU parameters, not moved afterwards (configure a new optimizer then).
    lr : float
        The learning rate, fixed for the optimizer's life.
    weight_decay : float
        L2 decay added to the gradient, as ``Adam(weight_decay=...)``.

    Notes
    -----
    Adam's moments live in the flat buffers, not in ``state``: ``state_dict`` does not
    carry them (nothing in this project checkpoints an optimizer).
    """

    def __init__(self, params: Iterable[nn.Parameter], lr: float, weight_decay: float = 0.0) -> None:
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})
        if len(self.param_groups) != 1:
            raise ValueError("FlatAdam takes one parameter group")
        ps: list[nn.Parameter] = self.param_groups[0]["params"]
        if any(p.dtype != torch.float32 or p.device.type != "cpu" for p in ps):
            raise ValueError("FlatAdam needs float32 CPU parameters; use torch.optim.Adam elsewhere")
        dense = [_memory_order(p) for p in ps]
        self._adam = StackedAdam({str(i): d[None] for i, (d, _) in enumerate(dense)}, (lr,), weight_decay)
        self._slots: list[tuple[str, nn.Parameter, Tensor]] = []
        for (name, value), grad, p, (_, flipped) in zip(self._adam.params.items(), self._adam.grads.values(),
                                                        ps, dense, strict=True):
            p.data = value[0].t() if flipped else value[0]
            self._slots.append((name, p, grad[0].t() if flipped else grad[0]))
        self._first = ps[0].data_ptr() if ps else 0

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One Adam update of every parameter that has a gradient."""
        loss = closure() if closure is not None else None
        self.direct_step()
        return loss

    def direct_step(self) -> None:
        """`step` without torch's wrapper (hooks, profiling), for `strategies.fused_adam.optimizer_step`."""
        if self._slots and self._slots[0][1].data_ptr() != self._first:
            raise RuntimeError("the parameters moved after FlatAdam was made; configure a new optimizer")
        skip: list[str] = []
        for name, p, view in self._slots:
            g = p.grad
            if g is view:
                continue
            if g is None:
                skip.append(name)
                continue
            view.copy_(g)
            p.grad = view  # later in-place writers fill the buffer itself
        self._adam.step(tuple(skip))
