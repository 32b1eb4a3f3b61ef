"""Build (nested) dataclasses from plain mappings with type checks and one-line errors."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from prunebench.errors import ConfigError


def describe(hint: Any) -> str:
    """Human wording of a type hint ("a list of int", "one of 'a', 'b'", ...)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in typing.get_args(hint))
    if origin is tuple:
        return f"a list of {describe(typing.get_args(hint)[0])}"
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "null"
    if origin is dict:
        return "a mapping"
    return getattr(hint, "__name__", str(hint))


def coerce(value: Any, hint: Any) -> Any:
    """``value`` converted to ``hint`` (int→float allowed, bool never a number); TypeError otherwise."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return coerce(value, option)
            except TypeError:
                continue
        raise TypeError
    if hint is type(None):
        if value is None:
            return None
        raise TypeError
    if origin is typing.Literal:
        if value in typing.get_args(hint):
            return value
        raise TypeError
    if origin is tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise TypeError
        return tuple(coerce(v, typing.get_args(hint)[0]) for v in value)
    if origin is dict or hint is dict:
        if isinstance(value, Mapping):
            return dict(value)
        raise TypeError
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise TypeError
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise TypeError
    if hint is str:
        if isinstance(value, str):
            return value
        raise TypeError
    raise TypeError


def build_dataclass(
    cls: type,
    raw: Mapping[str, Any],
    unknown: Callable[[str, str], str] | None = None,
    wrong: Callable[[str, Any, str], str] | None = None,
    prefix: str = "",
) -> Any:
    """Instantiate ``cls`` from ``raw``; nested dataclass fields recurse (dotted names in errors)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = unknown or (lambda key, allowed: f"unknown key '{key}'; allowed: {allowed}")
    wrong = wrong or (lambda key, value, expected: f"{key}={value!r} has the wrong type; allowed: {expected}")
    values = {}
    for key, value in raw.items():
        name = f"{prefix}{key}"
        if key not in hints:
            raise ConfigError(unknown(name, ", ".join(names) if names else "none"))
        hint = hints[key]
        nested = _dataclass_of(hint)
        if nested is not None and isinstance(value, Mapping):
            values[key] = build_dataclass(nested, value, unknown, wrong, prefix=f"{name}.")
            continue
        try:
            values[key] = coerce(value, hint)
        except TypeError:
            raise ConfigError(wrong(name, value, describe(hint))) from None
    return cls(**values)


def _dataclass_of(hint: Any) -> type | None:
    """The dataclass in ``hint`` (``X`` or ``X | None``), if any."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    return next((o for o in options if dataclasses.is_dataclass(o)), None)


def to_dict(obj: Any) -> Any:
    """Plain (YAML/JSON-ready) view of a dataclass tree; tuples become lists."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj
