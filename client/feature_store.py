"""The feature store: per (FM, site) a features array, its manifest index and provenance.

Layout, one folder per FM and site::

    ROOT/<fm>/<site>/features.npy      float32 (n_scans, dim)
    ROOT/<fm>/<site>/index.parquet     the manifest rows, in feature-row order
    ROOT/<fm>/<site>/provenance.json   fm, dim, n_scans, weights hash, generator, created

Every (FM, site) entry is written into a temporary sibling folder and renamed into place,
so a reader never sees a half-written entry and a crash loses nothing that was complete.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from client.atomic import atomic_dir
from client.schema import validate_manifest

STORE_VERSION = 1
FEATURES, INDEX, PROVENANCE = "features.npy", "index.parquet", "provenance.json"


class FeatureStoreError(ValueError):
    """A store entry is missing, inconsistent or holds non-finite features."""


@dataclass(frozen=True)
class Provenance:
    """Where an entry's features came from."""

    fm: str
    site: str
    dim: int
    n_scans: int
    weights_sha256: str
    generator: str
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    store_version: int = STORE_VERSION
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SiteFeatures:
    """One (FM, site) entry loaded from the store."""

    manifest: pd.DataFrame
    features: np.ndarray
    provenance: Provenance


def entry_dir(root: str | Path, fm: str, site: str) -> Path:
    """Folder of the (fm, site) entry; rejects names that would escape the store."""
    for name in (fm, site):
        if not name or "/" in name or name.startswith("."):
            raise FeatureStoreError(f"invalid store name {name!r}: no '/', no leading '.'")
    return Path(root) / fm / site


def _check_finite(features: np.ndarray, manifest: pd.DataFrame, where: str) -> None:
    finite = np.isfinite(features).all(axis=1)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        scan = manifest["scan_id"].iloc[row] if "scan_id" in manifest else row
        raise FeatureStoreError(
            f"{where}: {int((~finite).sum())} rows hold NaN/inf features, first row {row} "
            f"(scan {scan}); expected finite values"
        )


def write_entry(
    root: str | Path, manifest: pd.DataFrame, features: np.ndarray, provenance: Provenance
) -> Path:
    """Write one (FM, site) entry atomically.

    Parameters
    ----------
    root : str or Path
        Store root.
    manifest : pandas.DataFrame
        Manifest rows, in the order of ``features``' rows.
    features : numpy.ndarray
        (n_scans, dim) features.
    provenance : Provenance
        Its ``fm``, ``site`` and ``dim`` must agree with the data.

    Returns
    -------
    Path
        The entry folder.

    Raises
    ------
    FeatureStoreError
        If shapes disagree or features are not finite; nothing is written then.
    """
    target = entry_dir(root, provenance.fm, provenance.site)
    where = str(target)
    if features.ndim != 2 or features.shape != (len(manifest), provenance.dim):
        raise FeatureStoreError(
            f"{where}: features of shape {features.shape} for {len(manifest)} manifest rows; "
            f"expected ({len(manifest)}, {provenance.dim})"
        )
    validate_manifest(manifest, where)
    _check_finite(features, manifest, where)
    def fill(tmp: Path) -> None:
        np.save(tmp / FEATURES, np.ascontiguousarray(features, dtype=np.float32))
        manifest.reset_index(drop=True).to_parquet(tmp / INDEX, index=False)
        (tmp / PROVENANCE).write_text(json.dumps(asdict(provenance), indent=2, sort_keys=True))

    atomic_dir(target, fill)
    return target


def read_entry(root: str | Path, fm: str, site: str) -> SiteFeatures:
    """Load and validate one (FM, site) entry.

    Parameters
    ----------
    root : str or Path
        Store root.
    fm, site : str
        Which entry.

    Returns
    -------
    SiteFeatures
        Manifest, features and provenance.

    Raises
    ------
    FeatureStoreError
        Naming the file when a part is missing, the features' shape disagrees with the
        index or the provenance, or a feature is NaN/inf.
    """
    folder = entry_dir(root, fm, site)
    for name in (FEATURES, INDEX, PROVENANCE):
        if not (folder / name).is_file():
            raise FeatureStoreError(f"{folder / name}: missing; expected a complete store entry")
    prov = Provenance(**json.loads((folder / PROVENANCE).read_text()))
    features = np.load(folder / FEATURES, allow_pickle=False)
    manifest = pd.read_parquet(folder / INDEX)
    if features.ndim != 2 or features.shape[0] != len(manifest):
        raise FeatureStoreError(
            f"{folder / FEATURES}: {features.shape[0] if features.ndim else 0} rows but "
            f"{folder / INDEX} has {len(manifest)}; expected one feature row per index row"
        )
    if features.shape[1] != prov.dim:
        raise FeatureStoreError(
            f"{folder / FEATURES}: dimension {features.shape[1]}, but {PROVENANCE} says {prov.dim}"
        )
    validate_manifest(manifest, str(folder / INDEX))
    _check_finite(features, manifest, str(folder / FEATURES))
    return SiteFeatures(manifest=manifest, features=features, provenance=prov)


def list_entries(root: str | Path) -> dict[str, list[str]]:
    """Complete entries in the store: ``{fm: [site, ...]}`` (sorted)."""
    out: dict[str, list[str]] = {}
    for fm_dir in sorted(p for p in Path(root).glob("*") if p.is_dir() and not p.name.startswith(".")):
        sites = sorted(
            p.name for p in fm_dir.iterdir()
            if p.is_dir() and not p.name.startswith(".") and (p / PROVENANCE).is_file()
        )
        if sites:
            out[fm_dir.name] = sites
    return out
