"""Methods: one file each, found through the registry in `strategies.base`."""

from __future__ import annotations

import functools
import importlib
import pkgutil

_INFRA = {"base", "core", "federated", "reweighting"}


@functools.cache
def load_all() -> None:
    """Import every method file in this package so that its decorator registers it.

    Once per process: `strategies.base.get_method` calls it on every lookup, and a
    federated client looks its method up for every message.
    """
    for info in pkgutil.iter_modules(__path__):
        if info.name not in _INFRA and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
