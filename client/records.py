"""Flower records built and copied without validating again what is valid already.

Flower's record constructors check every key and value as they are set (a config value's
type through ``typing.get_args``, a list element by element), and ``ArrayRecord({...})``
builds each `Array` a second time. On the per-message path of a federation those checks
cost more than the content: tens of microseconds per record, for values that came out
of a record that was checked when it was built, or out of numpy.

Each function here gives what the public constructor would: the same classes with the
same attributes (the tests compare them field by field against Flower's own, so an
upgrade that changes the records' layout fails there, not in a run). Anything new
still goes through Flower's checks: `with_entries` sets its entries with ``record[k] = v``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict

R = TypeVar("R", ArrayRecord, ConfigRecord, MetricRecord, RecordDict)


def make_array(dtype: str, shape: tuple[int, ...], stype: str, data: bytes) -> Array:
    """An `Array` of fields known to be valid, as ``Array(dtype, shape, stype, data)`` builds it.

    Parameters
    ----------
    dtype, stype : str
        The array's dtype name and serialisation type (``"numpy.ndarray"``).
    shape : tuple of int
        Its shape.
    data : bytes
        Its serialised content.

    Returns
    -------
    flwr.app.Array
        Marked dirty (never serialised), like a freshly constructed one.
    """
    array = object.__new__(Array)
    array.__dict__.update(_is_dirty=True, dtype=dtype, shape=shape, stype=stype, data=data)
    return array


#: Record values that are immutable, shared by a copy.
_SHARED = frozenset({str, int, float, bool, bytes, type(None)})
_RECORDS = (ArrayRecord, ConfigRecord, MetricRecord, RecordDict)


def _copy_value(value: object) -> object:
    """A value of a record that shares nothing mutable with ``value``.

    Scalars, strings and bytes are immutable and shared; lists (of scalars, as records
    allow) are copied, `Array` objects re-made around the same (immutable) bytes, and
    nested records copied with `copy_record`.
    """
    kind = type(value)
    if kind in _SHARED:
        return value
    if kind is list:
        return list(value)
    if kind is Array:
        return make_array(value.dtype, tuple(value.shape), value.stype, value.data)
    if isinstance(value, _RECORDS):
        return copy_record(value)
    raise TypeError(f"a Flower record cannot hold a {kind.__name__}")


def _record_like(record: R, data: dict[str, object]) -> R:
    """A record of ``record``'s class and checkers holding ``data`` (already valid)."""
    new = object.__new__(type(record))
    new.__dict__.update(record.__dict__)
    new.__dict__["_data"] = data
    return new


def copy_record(record: R) -> R:
    """A copy of a Flower record (or `RecordDict`) that shares no mutable object with it.

    Parameters
    ----------
    record : ArrayRecord, ConfigRecord, MetricRecord or RecordDict
        A record built through Flower's constructors (so its content is valid).

    Returns
    -------
    The same type
        Equal to ``record``; mutating one leaves the other as it was.
    """
    return _record_like(record, {k: _copy_value(v) for k, v in record.__dict__["_data"].items()})


def with_entries(record: R, entries: Mapping[str, object]) -> R:
    """A new record of ``record``'s entries and ``entries`` (each checked by Flower as it is set).

    The new record shares ``record``'s values (lists included): records of one round's
    messages, which the server never mutates and a transport copies.
    """
    new = _record_like(record, dict(record.__dict__["_data"]))
    for key, value in entries.items():
        new[key] = value
    return new


def _filled(empty: R, entries: Mapping[str, object], kinds: tuple[type, ...]) -> R:
    """A record like ``empty`` holding ``entries``, checked as Flower checks them (once, here)."""
    for key, value in entries.items():
        if not isinstance(key, str) or not isinstance(value, kinds):
            empty[key] = value  # Flower's own check raises its own error
    return _record_like(empty, dict(entries))


def array_record(arrays: Mapping[str, Array]) -> ArrayRecord:
    """``ArrayRecord(arrays)``, without building every `Array` a second time.

    Parameters
    ----------
    arrays : mapping of str to Array
        The record's entries (Flower's key and value checks apply).

    Returns
    -------
    flwr.app.ArrayRecord
        Holding these very `Array` objects.
    """
    return _filled(ArrayRecord(), arrays, (Array,))


def record_dict(records: Mapping[str, ArrayRecord | ConfigRecord | MetricRecord]) -> RecordDict:
    """``RecordDict(records)`` (Flower's checks, without its per-entry lookups and logging)."""
    return _filled(RecordDict(), records, (ArrayRecord, ConfigRecord, MetricRecord))


def copy_message(msg: Message) -> Message:
    """A copy of ``msg`` that shares no mutable object with it, as a transport would deliver.

    Metadata fields are immutable values; content records are copied with `copy_record`
    and an error is re-made. The result equals a pickle round trip of ``msg``.
    """
    metadata = object.__new__(type(msg.metadata))
    metadata.__dict__.update(msg.metadata.__dict__)
    content = copy_record(msg.content) if msg.has_content() else None
    error = Error(code=msg.error.code, reason=msg.error.reason) if msg.has_error() else None
    new = object.__new__(Message)
    new.__dict__.update(msg.__dict__, _metadata=metadata, _content=content, _error=error)
    return new
