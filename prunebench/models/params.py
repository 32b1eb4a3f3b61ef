"""Typed, validated method parameters (names as in docs/contracts.md §4).

Each pruning method declares a frozen dataclass of its parameters. ``parse_params`` turns a plain
mapping (from YAML, ``--set`` or a search space) into that dataclass with pydantic's strict rules
(``prunebench.validation.build_dataclass``: unknown names and wrong types refused); the dataclass's
``validate`` then checks ranges against the backbone depth with the helpers below.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from prunebench.errors import ConfigError
from prunebench.validation import build_dataclass


def parse_params(method: str, params_cls: type, raw: Mapping[str, Any] | None, depth: int, key: str | None = None) -> Any:
    """Build and validate ``params_cls`` from ``raw``; raise ConfigError on the first bad entry.

    Errors name the parameters after ``key`` (``method.params.kappa must be ...``,
    ``method.params: kappa=1.5 is outside ...``) or, without it, after the method (``vpp: ...``).
    """
    if key is None:
        params = build_dataclass(params_cls, raw or {}, where=method)
    else:
        params = build_dataclass(params_cls, raw or {}, prefix=f"{key}.")
    params.validate(key or method, depth)
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
