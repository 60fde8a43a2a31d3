"""Models made from a pristine prototype instead of by their constructor.

A client builds a fresh model for every training message and loads the received weights
over all of its parameters and buffers. Running the constructor again costs several times
more than the model's content, in Python: submodules, parameter registration, and the
(skipped) initialisation. When a model's state outside its parameters and buffers is
plain immutable values — numbers, strings, frozen dataclasses such as its config and
task spec — a copy of a never-used prototype's module tree, with fresh tensors, *is* what
the constructor would return. `clonable` checks that once per prototype; anything else
(plain tensors or containers as attributes, closures, shared submodules or tied weights)
leaves the model to its constructor.
"""

from __future__ import annotations

import dataclasses
import enum
from types import BuiltinFunctionType, FunctionType

import torch
from torch import nn

#: The module tree and tensors, which `clone` rebuilds rather than shares.
_STRUCTURE = frozenset({"_parameters", "_buffers", "_modules"})
_ATOMS = (bool, int, float, complex, str, bytes, type, BuiltinFunctionType, enum.Enum, torch.dtype,
          torch.device)


def _immutable(value: object) -> bool:
    """Whether ``value`` can be shared between models without one seeing the other's changes."""
    if value is None or isinstance(value, _ATOMS):
        return True
    if isinstance(value, FunctionType):
        return value.__closure__ is None  # a closure may capture the prototype itself
    if isinstance(value, tuple | frozenset):
        return all(_immutable(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return value.__dataclass_params__.frozen and all(
            _immutable(getattr(value, f.name)) for f in dataclasses.fields(value))
    return False


def _attribute_ok(value: object) -> bool:
    """An attribute `clone` can reproduce: immutable, or a registry (dict/set) of immutable entries."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and _immutable(v) for k, v in value.items())
    if isinstance(value, set):
        return all(_immutable(v) for v in value)
    return _immutable(value)


def clonable(model: nn.Module) -> bool:
    """Whether `clone` of ``model`` equals constructing it anew (see the module docstring).

    Every module's attributes must pass `_attribute_ok` (nn.Module's hook registries are
    empty dicts), every tensor must be a plain CPU `Parameter` or buffer, and no module or
    parameter may appear twice in the tree (sharing would be lost).
    """
    modules = list(model.named_modules(remove_duplicate=False))
    params = list(model.named_parameters(remove_duplicate=False))
    if len({id(m) for _, m in modules}) != len(modules) or len({id(p) for _, p in params}) != len(params):
        return False
    for _, module in modules:
        if not all(_attribute_ok(v) for k, v in vars(module).items() if k not in _STRUCTURE):
            return False
        tensors = [*module._parameters.values(), *module._buffers.values()]
        if not all(t is None or (type(t) in (nn.Parameter, torch.Tensor) and t.is_cpu) for t in tensors):
            return False
    return True


def clone(prototype: nn.Module) -> nn.Module:
    """A new model with ``prototype``'s structure and attributes, holding fresh tensors.

    Parameters and persistent buffers are allocated but not filled: the caller loads a
    full state dict over them. Non-persistent buffers (never loaded) are copied. Only
    for a prototype that is `clonable` and has never been trained or changed.
    """
    new = object.__new__(type(prototype))
    state = {k: type(v)(v) if isinstance(v, dict | set) else v
             for k, v in vars(prototype).items() if k not in _STRUCTURE}
    transient = prototype._non_persistent_buffers_set
    state["_parameters"] = {k: None if p is None else nn.Parameter(torch.empty_like(p), p.requires_grad)
                            for k, p in prototype._parameters.items()}
    state["_buffers"] = {k: None if b is None else b.clone() if k in transient else torch.empty_like(b)
                         for k, b in prototype._buffers.items()}
    state["_modules"] = {k: None if m is None else clone(m) for k, m in prototype._modules.items()}
    new.__dict__.update(state)
    return new
