"""Site adapters: one module per public release, plus a generic TOML-driven adapter.

Importing this package registers every adapter in :data:`client.sites.base.ADAPTERS`.
"""

from client.sites import (  # noqa: F401  (registers)
    cbis_ddsm,
    cdd_cesm,
    cmmd,
    generic,
    inbreast,
    kau_bcmd,
    mias,
    mmd,
    rsna,
    vindr,
)
from client.sites.base import ADAPTERS, AdapterError, AdapterResult, MappingReport, get_adapter

__all__ = ["ADAPTERS", "AdapterError", "AdapterResult", "MappingReport", "get_adapter"]
