"""Fixed-size encoding of a site's confusion counts for the wire.

A client's evaluation reply is one int64 array of shape ``(len(SLOTS), C, C)`` whatever
its number of scans: the site total, then density A–D, then the age bands. A slot the
site does not have stays zero, so the payload never grows with the number of patients
and carries no identifiers.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from io import BytesIO
from typing import Final

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

from client.evaluation import SiteCounts
from client.schema import AGE_BANDS, TASKS

#: (group kind, group) of each slot; ``None`` stands for the site itself.
SLOTS: Final[tuple[tuple[str, str | None], ...]] = (
    ("site", None),
    *(("density", d) for d in TASKS["density"]),
    *(("age_band", b) for b in AGE_BANDS),
)


def encode_counts(counts: SiteCounts) -> np.ndarray:
    """Pack ``counts`` into the fixed ``(len(SLOTS), C, C)`` array.

    Parameters
    ----------
    counts : SiteCounts
        A site's counts from `client.evaluation.site_counts`.

    Returns
    -------
    numpy.ndarray
        int64 array; absent groups are zero.
    """
    c = counts.n_classes
    out = np.zeros((len(SLOTS), c, c), dtype=np.int64)
    for i, (kind, group) in enumerate(SLOTS):
        key = (kind, counts.site if group is None else group)
        if key in counts.counts:
            out[i] = counts.counts[key]
    return out


def decode_counts(site: str, packed: np.ndarray) -> SiteCounts:
    """Unpack `encode_counts`' array into `SiteCounts` (empty subgroups dropped).

    Parameters
    ----------
    site : str
        The sending site's name.
    packed : numpy.ndarray
        ``(len(SLOTS), C, C)`` counts.

    Returns
    -------
    SiteCounts
        The site total and every non-empty subgroup.
    """
    packed = np.asarray(packed, dtype=np.int64)
    if packed.ndim != 3 or packed.shape[0] != len(SLOTS) or packed.shape[1] != packed.shape[2]:
        raise ValueError(f"counts from {site!r} have shape {packed.shape}; expected ({len(SLOTS)}, C, C)")
    counts = {("site", site): packed[0]}
    for (kind, group), cm in zip(SLOTS[1:], packed[1:], strict=True):
        if cm.sum() > 0:
            counts[(kind, str(group))] = cm
    return SiteCounts(site=site, n_classes=int(packed.shape[1]), counts=counts)


_NPY_MAGIC = b"\x93NUMPY\x01\x00"


def array_numpy(array: Array) -> np.ndarray:
    """A writable copy of a Flower `Array`'s content, as ``Array.numpy()`` returns.

    Flower stores numpy arrays as ``.npy`` bytes and ``Array.numpy()`` parses the header
    with ``ast.literal_eval`` (≈ 30 µs, the cost of copying a probe's weights several
    times over). A C-ordered version-1.0 header whose dtype matches ``array.dtype`` is
    skipped instead; anything else goes through ``Array.numpy()``.
    """
    data = array.data
    if array.stype == "numpy.ndarray" and data[:8] == _NPY_MAGIC:
        start = 10 + int.from_bytes(data[8:10], "little")
        dtype = np.dtype(array.dtype)
        header = data[10:start]
        if b"'fortran_order': False" in header and f"'descr': '{dtype.str}'".encode() in header:
            flat = np.frombuffer(data, dtype=dtype, offset=start)
            if flat.size == int(np.prod(array.shape)):
                return flat.reshape(array.shape).copy()
    return array.numpy()


@lru_cache(maxsize=256)
def _npy_header(descr: str, shape: tuple[int, ...]) -> bytes:
    """The ``.npy`` (version 1.0) header ``np.save`` writes for a C-ordered array."""
    buf = BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def numpy_array(value: np.ndarray | torch.Tensor) -> Array:
    """A Flower `Array` of ``value``, byte for byte what ``Array(ndarray)`` stores.

    ``Array(ndarray)`` runs ``np.save`` into a buffer, which formats the header anew for
    every array; the header of a (dtype, shape) is cached here instead. Object arrays go
    through ``Array`` (which refuses them, as ``np.save`` without pickle does).
    """
    arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    if arr.dtype.hasobject:
        return Array(arr)
    arr = arr if arr.flags.c_contiguous else arr.copy(order="C")  # keeps 0-d arrays 0-d
    data = _npy_header(np.lib.format.dtype_to_descr(arr.dtype), arr.shape) + arr.tobytes()
    return Array(dtype=str(arr.dtype), shape=tuple(int(n) for n in arr.shape), stype="numpy.ndarray",
                 data=data)


def numpy_record(arrays: Mapping[str, np.ndarray | torch.Tensor]) -> ArrayRecord:
    """An ``ArrayRecord`` of a state dict or of named arrays (`numpy_array` for each entry)."""
    return ArrayRecord({k: numpy_array(v) for k, v in arrays.items()})


def record_tensors(record: Mapping[str, Array]) -> dict[str, torch.Tensor]:
    """An ``ArrayRecord`` as a torch state dict (`array_numpy` for each entry)."""
    return {k: torch.from_numpy(array_numpy(v)) for k, v in record.items()}
