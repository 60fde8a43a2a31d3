"""Strict TOML → frozen-dataclass loading for ``configs/``.

Configs are data (DESIGN principle 6): every key is checked against the dataclass it
fills, and an unknown or mistyped key is one error that names the file and the key.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import tomllib

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration file holds an unknown key or a value of the wrong type."""


def _origin(tp: Any) -> Any:
    return typing.get_origin(tp)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert containers."""
    origin = _origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} is not of type {tp}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return build(tp, value, where)
    if origin is tuple:
        (item_tp, *_rest) = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (dict, Mapping) or tp in (dict,):
        key_tp, val_tp = typing.get_args(tp)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return {str(k): _coerce(v, val_tp, f"{where}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is Any or (isinstance(tp, type) and isinstance(value, tp)):
        if tp is int and isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    raise ConfigError(f"{where}: expected {getattr(tp, '__name__', tp)}, got {value!r}")


@functools.cache
def _schema(cls: type) -> tuple[dict[str, Any], dict[str, dataclasses.Field]]:
    """A dataclass's resolved type hints and fields (resolving hints compiles source: cache it)."""
    return typing.get_type_hints(cls), {f.name: f for f in dataclasses.fields(cls)}


def build(cls: type[T], data: Mapping[str, Any], where: str) -> T:
    """Fill the dataclass ``cls`` from a mapping, rejecting unknown keys.

    Parameters
    ----------
    cls : type
        A dataclass type; nested dataclass fields are built recursively.
    data : Mapping
        Parsed TOML table.
    where : str
        ``file:table`` prefix used in error messages.

    Returns
    -------
    cls
        The validated instance.

    Raises
    ------
    ConfigError
        For an unknown key, a missing required key or a value of the wrong type.
    """
    hints, fields = _schema(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; expected one of {sorted(fields)}")
    kwargs = {}
    for name, field in fields.items():
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], f"{where}.{name}")
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}: missing required key {name!r}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {err}") from None


def read_toml(path: str | Path) -> dict[str, Any]:
    """Parse a TOML file, turning a syntax error into a `ConfigError` naming the file.

    Parameters
    ----------
    path : str or Path
        The file.

    Returns
    -------
    dict
        The parsed document.
    """
    path = Path(path)
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: invalid TOML: {err}") from None
