"""Fixed-size encoding of a site's confusion counts for the wire.

A client's evaluation reply is one int64 array of shape ``(len(SLOTS), C, C)`` whatever
its number of scans: the site total, then density A–D, then the age bands. A slot the
site does not have stays zero, so the payload never grows with the number of patients
and carries no identifiers.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Mapping
from functools import lru_cache
from io import BytesIO
from pathlib import Path
from typing import Final

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

from client.evaluation import SiteCounts
from client.records import array_record, make_array
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


def _npy_view(array: Array) -> np.ndarray | None:
    """A read-only view of an `Array`'s ``.npy`` bytes, or None when the header is unusual.

    Flower's ``Array.numpy()`` parses the header with ``ast.literal_eval`` (≈ 30 µs, the
    cost of copying a probe's weights several times over). The header ``np.save`` (and
    `numpy_array`) writes for a C-ordered array of ``array``'s dtype and shape is
    recognised instead.
    """
    if array.stype != "numpy.ndarray":
        return None
    try:
        _, descr = _dtype_fields(np.dtype(array.dtype))
        shape = tuple(array.shape)
        header = _npy_header(descr, shape)
    except (TypeError, ValueError):
        return None
    data = array.data
    if not data.startswith(header):
        return None
    count = math.prod(shape)
    if len(data) != len(header) + count * np.dtype(array.dtype).itemsize:
        return None
    return np.frombuffer(data, dtype=array.dtype, count=count, offset=len(header)).reshape(shape)


def array_numpy(array: Array) -> np.ndarray:
    """A writable copy of a Flower `Array`'s content, as ``Array.numpy()`` returns (`_npy_view`)."""
    view = _npy_view(array)
    return array.numpy() if view is None else view.copy()


def save_record(path: str | Path, record: Mapping[str, Array]) -> None:
    """Write an ``ArrayRecord`` as an ``.npz`` file (what ``np.savez(path, **arrays)`` writes).

    An ``.npz`` is a zip of ``.npy`` files, and a record's arrays are ``.npy`` bytes
    already: they are stored as they are instead of being decoded and encoded again
    (other arrays go through ``np.save``). ``np.load`` reads the file.
    """
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, array in record.items():
            data = array.data if _npy_view(array) is not None else _npy_bytes(array_numpy(array))
            archive.writestr(f"{name}.npy", data)


def _npy_bytes(value: np.ndarray) -> bytes:
    buf = BytesIO()
    np.save(buf, value, allow_pickle=False)
    return buf.getvalue()


def load_record(model: torch.nn.Module, record: Mapping[str, Array]) -> None:
    """Load an ``ArrayRecord`` of a full state dict into ``model``, strictly.

    Equal to ``model.load_state_dict(record_tensors(record))``, which it falls back on
    (and on its errors) unless every entry can be copied straight from the record's
    bytes into the model's CPU tensor of the same name, dtype and shape, and no module
    customises loading. That skips a tensor per entry and the recursion through
    ``load_state_dict``: more than half of loading a probe's weights.
    """
    own = model.state_dict()
    if list(own) == list(record) and _plain_loading(model):
        pairs = [(own[k], _npy_view(record[k])) for k in own]
        if all(v is not None and t.is_cpu and t.dtype == _TORCH.get(v.dtype) and tuple(t.shape) == v.shape
               for t, v in pairs):
            for tensor, view in pairs:
                np.copyto(tensor.numpy(), view)
            return
    model.load_state_dict(record_tensors(record))


#: numpy dtypes with the torch dtype of the same bytes.
_TORCH = {np.dtype(n): getattr(torch, n) for n in ("float32", "float64", "float16", "int64", "int32", "bool")}


def _plain_loading(model: torch.nn.Module) -> bool:
    """Whether no module of ``model`` customises ``load_state_dict`` (hooks, overrides)."""
    base = torch.nn.Module._load_from_state_dict
    return all(type(m)._load_from_state_dict is base and not m._load_state_dict_pre_hooks
               and not m._load_state_dict_post_hooks for m in model.modules())


@lru_cache(maxsize=256)
def _npy_header(descr: str, shape: tuple[int, ...]) -> bytes:
    """The ``.npy`` (version 1.0) header ``np.save`` writes for a C-ordered array."""
    buf = BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


@lru_cache(maxsize=64)
def _dtype_fields(dtype: np.dtype) -> tuple[str, str]:
    """(``str(dtype)``, ``.npy`` descr) of a dtype: formatting either costs microseconds per array."""
    return str(dtype), np.lib.format.dtype_to_descr(dtype)


def numpy_array(value: np.ndarray | torch.Tensor) -> Array:
    """A Flower `Array` of ``value``, byte for byte what ``Array(ndarray)`` stores.

    ``Array(ndarray)`` runs ``np.save`` into a buffer, which formats the header anew for
    every array; the header of a (dtype, shape) is cached here instead, and the `Array`
    is made from fields that are valid by construction (`client.records.make_array`).
    Object arrays go through ``Array`` (which refuses them, as ``np.save`` without pickle
    does).
    """
    arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    if arr.dtype.hasobject:
        return Array(arr)
    arr = arr if arr.flags.c_contiguous else arr.copy(order="C")  # keeps 0-d arrays 0-d
    name, descr = _dtype_fields(arr.dtype)
    shape = tuple(int(n) for n in arr.shape)
    return make_array(name, shape, "numpy.ndarray", _npy_header(descr, shape) + arr.tobytes())


def numpy_record(arrays: Mapping[str, np.ndarray | torch.Tensor]) -> ArrayRecord:
    """An ``ArrayRecord`` of a state dict or of named arrays (`numpy_array` for each entry).

    ``ArrayRecord({...})`` would build every `Array` again (`client.records.array_record`).
    """
    return array_record({name: numpy_array(value) for name, value in arrays.items()})


def record_tensors(record: Mapping[str, Array]) -> dict[str, torch.Tensor]:
    """An ``ArrayRecord`` as a torch state dict (`array_numpy` for each entry)."""
    return {k: torch.from_numpy(array_numpy(v)) for k, v in record.items()}
