"""Reading FM checkpoints safely: tensors only, foreign pickled objects as inert stand-ins.

Mammo-CLIP and GLoRIA checkpoints pickle OmegaConf/Lightning objects beside the weights.
``torch.load(weights_only=True)`` refuses them; importing those libraries just to read a
config we ignore would be a needless dependency and a code-execution risk. The restricted
unpickler below resolves only the globals torch's own weights-only loader allows (plus
``copyreg._reconstructor`` for dict subclasses) and turns every other class into a
:class:`StandIn` that records its arguments and never runs foreign code.
"""

from __future__ import annotations

import copyreg
import pickle
import types
from pathlib import Path
from typing import Any

import torch
from torch import nn

from client.extractors.base import WeightsError

_STANDINS: dict[tuple[str, str], type] = {}


class StandIn(dict):
    """Inert replacement for a class that is not allowed (or not importable) at load time."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self.standin_args = args

    def __setstate__(self, state: Any) -> None:
        self.standin_state = state


def _standin(module: str, name: str) -> type:
    key = (module, name)
    if key not in _STANDINS:
        _STANDINS[key] = type(name, (StandIn,), {"__module__": f"standin.{module}"})
    return _STANDINS[key]


def _allowed() -> dict[str, Any]:
    from torch._weights_only_unpickler import _get_allowed_globals

    allowed = dict(_get_allowed_globals())
    allowed["copyreg._reconstructor"] = copyreg._reconstructor
    return allowed


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        obj = _allowed().get(f"{module}.{name}")
        return obj if obj is not None else _standin(module, name)


#: A ``pickle_module`` for ``torch.load`` that uses the restricted unpickler.
restricted_pickle = types.SimpleNamespace(Unpickler=_Unpickler, load=pickle.load, __name__="restricted")


def load_checkpoint(path: str | Path, fm: str, expected: str) -> Any:
    """Load a torch checkpoint: weights-only first, else with foreign objects as stand-ins.

    Parameters
    ----------
    path : str or Path
        The file.
    fm, expected : str
        Named in the error when the file is not a torch checkpoint at all.

    Returns
    -------
    Any
        The unpickled object (usually a dict).
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass  # foreign classes in the pickle: retry with stand-ins below
    except Exception as err:
        raise WeightsError(f"{fm}: {path} is not a readable torch checkpoint ({err}); "
                           f"expected {expected}") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=restricted_pickle)
    except Exception as err:
        raise WeightsError(f"{fm}: {path} is not a readable torch checkpoint ({err}); "
                           f"expected {expected}") from None


def take(obj: Any, key: str, fm: str, path: str | Path, expected: str) -> Any:
    """``obj[key]`` or a clear error naming the file and the layout expected."""
    if not isinstance(obj, dict) or key not in obj:
        found = sorted(obj)[:5] if isinstance(obj, dict) else type(obj).__name__
        raise WeightsError(f"{fm}: {path} has no {key!r} entry (found {found}); expected {expected}")
    return obj[key]


def load_prefixed(
    model: nn.Module, state: dict[str, Any], prefix: str, fm: str, path: str | Path, expected: str,
    optional: tuple[str, ...] = (),
) -> None:
    """Load the ``prefix``-ed keys of ``state`` into ``model`` strictly, with a clear error.

    Parameters
    ----------
    model : torch.nn.Module
        Receives the weights.
    state : dict
        Checkpoint state dict.
    prefix : str
        Stripped from the keys; keys without it are ignored (other towers, heads).
    fm, path, expected : str
        Named in errors.
    optional : tuple of str
        Model-key prefixes that may be absent from the checkpoint (unused heads).
    """
    if not isinstance(state, dict):
        raise WeightsError(f"{fm}: {path} holds {type(state).__name__}, not a state dict; "
                           f"expected {expected}")
    sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not sub:
        raise WeightsError(f"{fm}: {path} has no keys starting with {prefix!r} (first keys "
                           f"{sorted(state)[:3]}); expected {expected}")
    own = model.state_dict()
    missing = [k for k in own if k not in sub and not k.startswith(optional)]
    shapes = [k for k, v in sub.items() if k in own and tuple(own[k].shape) != tuple(v.shape)]
    if missing or shapes:
        what = f"missing {missing[:3]}" if missing else f"shape mismatch at {shapes[:3]}"
        raise WeightsError(f"{fm}: {path} does not fit the {fm} architecture ({what}, {len(missing)} "
                           f"missing, {len(shapes)} mis-shaped); expected {expected}")
    model.load_state_dict({k: v for k, v in sub.items() if k in own}, strict=False)
