"""Methods: one file each, found through the registry in `strategies.base`."""

from __future__ import annotations

import importlib
import pkgutil

_INFRA = {"base", "core", "federated", "reweighting"}


def load_all() -> None:
    """Import every method file in this package so that its decorator registers it."""
    for info in pkgutil.iter_modules(__path__):
        if info.name not in _INFRA and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
