"""torch's fused CPU Adam issued directly: `optimizer_step`, and the step counts it keeps.

Probes and the methods' small networks take some 10⁵ steps per grid on one CPU thread,
where the Python around ``Adam.step``'s one fused kernel (hooks, grouping, state checks)
and the increment of one step-count tensor per parameter cost as much as a tenth of
the step. This module runs the same kernel on the same ``optimizer.state`` with less
of both; `tests/test_core.py` checks it against ``Adam.step`` bit for bit.
"""

from __future__ import annotations

import operator

import torch
from torch import Tensor
from torch.optim import optimizer as _torch_optimizer


def optimizer_step(*optimizers: torch.optim.Optimizer) -> None:
    """``step()`` of each optimizer, with plain fused CPU Adams' steps issued directly.

    ``Adam.step`` spends ≈ 0.15 ms per call in Python around its one fused kernel: as
    much as the kernel itself for a probe, paid on every one of a grid's ~10⁵ steps.
    For `strategies.base.make_optimizer`'s Adam this runs the same kernel on the same
    state (``optimizer.state`` initialised as torch does, see `init_states`), so both
    paths give identical parameters; any other optimizer, or one with hooks, takes
    ``step()``. Parameter groups with the same hyperparameters, of one optimizer or
    several (FADES' model and discriminator), share one kernel call: the kernel works
    tensor by tensor, so the result is the same as one call per optimizer. An optimizer
    with a ``direct_step`` method (`strategies.flat_adam.FlatAdam`) and no hooks has it
    called instead of ``step()``.

    Parameters
    ----------
    *optimizers : torch.optim.Optimizer
        The optimizers to step, each over disjoint parameters; parameters without a
        gradient are skipped, as torch does.
    """
    calls: dict[tuple, list[list[Tensor]]] = {}
    for optimizer in optimizers:
        direct = getattr(optimizer, "direct_step", None)
        if direct is not None and not _hooked(optimizer):
            direct()  # torch's wrapper around ``step`` costs some 30 µs a call
            continue
        if not _plain_fused_adam(optimizer):
            optimizer.step()
            continue
        for group in optimizer.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            states = [optimizer.state[p] for p in params]
            if not all(states):
                init_states(params, states)
            steps = [st["step"] for st in states]
            increment(steps)
            key = (group["lr"], tuple(group["betas"]), group["weight_decay"], group["eps"], group["maximize"])
            lists = calls.setdefault(key, [[], [], [], [], []])
            tensors = _dense(params, [p.grad for p in params], [st["exp_avg"] for st in states],
                             [st["exp_avg_sq"] for st in states])
            for out, add in zip(lists, (*tensors, steps), strict=True):
                out += add
    for (lr, (beta1, beta2), decay, eps, maximize), (params, grads, avgs, squares, steps) in calls.items():
        torch._fused_adam_(params, grads, avgs, squares, [], steps, amsgrad=False, lr=lr, beta1=beta1,
                           beta2=beta2, weight_decay=decay, eps=eps, maximize=maximize, grad_scale=None,
                           found_inf=None)


def transposed(p: Tensor) -> bool:
    """Whether ``p`` is a 2-D tensor stored as its transpose (`strategies.base.input_major_`)."""
    return p.dim() == 2 and not p.is_contiguous() and p.t().is_contiguous()


def _dense(*lists: list[Tensor]) -> tuple[list[Tensor], ...]:
    """Parameters, gradients and moments as views the fused kernel runs at full speed.

    The kernel is elementwise but takes a slow, strided path (2.3× slower for a
    2048 → 256 weight) on a weight stored as (in, out) (`strategies.base.input_major_`);
    where all four tensors share that layout, their transposes are the same elements in
    memory order, so the update is the same.
    """
    for i, p in enumerate(lists[0]):
        if transposed(p) and all(lst[i].stride() == p.stride() for lst in lists[1:]):
            for lst in lists:
                lst[i] = lst[i].t()
    return lists


def init_states(params: list[Tensor], states: list[dict]) -> None:
    """Create the Adam state of the parameters whose ``states`` entry is still empty.

    The moments are what ``Adam._init_group`` creates for a fused CPU parameter. The
    step counts are 0-d float32 tensors too, but views of one buffer, so that
    `increment` can advance all of them with one operation.
    """
    new = [(p, st) for p, st in zip(params, states, strict=True) if not st]
    counts = torch.zeros(len(new), dtype=torch.float32, device=params[0].device)
    for (p, st), count in zip(new, counts.unbind(), strict=True):
        st["step"] = count
        st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)


#: The last step-count lists `increment` found to be one whole buffer, with that buffer.
_WHOLE: list[tuple[list[Tensor], Tensor]] = []


def increment(steps: list[Tensor]) -> None:
    """Add 1 to each 0-d step count of ``steps``.

    When they are all the elements of one buffer (`init_states`), one in-place add on
    the buffer does it: ``torch._foreach_add_`` on 0-d CPU tensors costs about 3 µs per
    tensor (60 µs a step for FADES' 20 parameters). Any other arrangement (state
    loaded from a checkpoint, or created by ``Adam.step``) takes ``_foreach_add_``. The
    last few lists found whole are remembered (holding them, so their identities stay
    theirs): checking a list against one is a fraction of checking it afresh.
    """
    for known, base in _WHOLE:
        if len(known) == len(steps) and all(map(operator.is_, known, steps)):
            base.add_(1)
            return
    base = steps[0]._base
    if (base is not None and base.dim() == 1 and base.numel() == len(steps)
            and all(s._base is base for s in steps)
            and len({s.storage_offset() for s in steps}) == len(steps)):
        base.add_(1)
        _WHOLE.insert(0, (list(steps), base))
        del _WHOLE[8:]
    else:
        torch._foreach_add_(steps, 1)


def _hooked(optimizer: torch.optim.Optimizer) -> bool:
    """Whether step hooks of ``optimizer``'s own or of every optimizer's are registered."""
    return bool(optimizer._optimizer_step_pre_hooks or optimizer._optimizer_step_post_hooks
                or _torch_optimizer._global_optimizer_pre_hooks
                or _torch_optimizer._global_optimizer_post_hooks)


def _plain_fused_adam(optimizer: torch.optim.Optimizer) -> bool:
    """A fused, non-AMSGrad, L2-decay Adam on float32 CPU parameters, with no step hooks.

    The parameters' dtype and device are checked once per parameter list (some 25 µs a
    step for FADES): moving a model converts its parameters in place, and the fused
    kernel then runs on them as ``Adam.step`` would.
    """
    if type(optimizer) is not torch.optim.Adam or _hooked(optimizer):
        return False
    groups = optimizer.param_groups
    if not all(g["fused"] and not (g["amsgrad"] or g["capturable"] or g["differentiable"]
                                   or g.get("decoupled_weight_decay", False) or isinstance(g["lr"], Tensor))
               for g in groups):
        return False
    checked = optimizer.__dict__.get("_plain_params", ())
    if len(checked) == len(groups) and all(lst is g["params"] and n == len(lst)
                                           for (lst, n), g in zip(checked, groups, strict=True)):
        return True
    plain = all(p.dtype == torch.float32 and p.device.type == "cpu" for g in groups for p in g["params"])
    if plain:
        optimizer.__dict__["_plain_params"] = tuple((g["params"], len(g["params"])) for g in groups)
    return plain
