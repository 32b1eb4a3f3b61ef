"""Typed, validated method parameters (names as in architecture.md's table).

Each pruning method declares a frozen dataclass of its parameters. ``parse_params`` turns a plain
mapping (from YAML, ``--set`` or a search space) into that dataclass, coercing types and rejecting
unknown names; each dataclass's ``validate`` then checks ranges against the backbone depth.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from prunebench.errors import ConfigError


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if origin is tuple:
        return f"a list of {_describe(typing.get_args(hint)[0])}"
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "null"
    return getattr(hint, "__name__", str(hint))


def _coerce(value: Any, hint: Any) -> Any:
    """Return ``value`` converted to ``hint`` or raise TypeError."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _coerce(value, option)
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
        item = typing.get_args(hint)[0]
        return tuple(_coerce(v, item) for v in value)
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


def parse_params(method: str, params_cls: type, raw: Mapping[str, Any] | None, depth: int) -> Any:
    """Build and validate ``params_cls`` from ``raw``; raise ConfigError on the first bad entry."""
    raw = dict(raw or {})
    hints = typing.get_type_hints(params_cls)
    names = [f.name for f in dataclasses.fields(params_cls)]
    values = {}
    for key, value in raw.items():
        if key not in hints:
            allowed = ", ".join(names) if names else "none"
            raise ConfigError(f"unknown parameter '{key}' for method '{method}'; allowed: {allowed}")
        try:
            values[key] = _coerce(value, hints[key])
        except TypeError:
            raise ConfigError(
                f"{method}: {key}={value!r} has the wrong type; allowed: {_describe(hints[key])}"
            ) from None
    params = params_cls(**values)
    params.validate(method, depth)
    return params


def check_ratio(method: str, name: str, value: float) -> None:
    """A keep ratio or target must lie in (0, 1]."""
    if not 0.0 < value <= 1.0:
        raise ConfigError(f"{method}: {name}={value} is outside (0, 1]; allowed: a ratio in (0, 1]")


def check_positive(method: str, name: str, value: float, allow_zero: bool = False) -> None:
    """A temperature must be > 0; a loss weight >= 0."""
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{method}: {name}={value} is not allowed; allowed: a number {bound}")


def check_block(method: str, name: str, value: int, depth: int) -> None:
    """A block index must be a 0-based block of the backbone."""
    if not 0 <= value < depth:
        raise ConfigError(f"{method}: {name}={value} is outside the blocks; allowed: 0..{depth - 1}")


def check_positions(method: str, name: str, positions: Sequence[int], depth: int) -> None:
    """Positions must be valid block indices, strictly increasing (sorted, no repeats)."""
    for p in positions:
        check_block(method, name, p, depth)
    if any(b <= a for a, b in zip(positions, positions[1:])):
        raise ConfigError(
            f"{method}: {name}={list(positions)} is not strictly increasing; "
            "allowed: sorted block indices without repeats"
        )


def as_dict(params: Any) -> dict[str, Any]:
    """Plain-dict view of a params dataclass (tuples as lists), for logging and JSON."""
    out = {}
    for f in dataclasses.fields(params):
        v = getattr(params, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out
