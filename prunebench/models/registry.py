"""Registry of pruning methods and backbones: names → classes, with validated construction."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from prunebench.errors import ConfigError
from prunebench.models.params import parse_params
from prunebench.models.pruning import PruningMethod

_METHODS: dict[str, type[PruningMethod]] = {}
_BUILTIN_MODULES = ("prunebench.models.dense", "prunebench.models.vpp", "prunebench.baselines")

#: backbone name -> (timm model name, embedding dim, heads, depth)
BACKBONES: dict[str, tuple[str, int, int, int]] = {
    "vit_tiny": ("vit_tiny_patch16_224", 192, 3, 12),
    "vit_small": ("vit_small_patch16_224", 384, 6, 12),
}


def register_method(cls: type[PruningMethod]) -> type[PruningMethod]:
    """Class decorator: make a method available by its ``name``."""
    _METHODS[cls.name] = cls
    return cls


def method_names() -> list[str]:
    """Names of all registered methods, sorted."""
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)
    return sorted(_METHODS)


def method_class(name: str) -> type[PruningMethod]:
    """The class registered as ``name``; ConfigError naming the allowed ones otherwise."""
    names = method_names()
    if name not in _METHODS:
        raise ConfigError(f"unknown method '{name}'; allowed: {', '.join(names)}")
    return _METHODS[name]


def backbone_spec(name: str) -> tuple[str, int, int, int]:
    """(timm name, dim, heads, depth) of a backbone; ConfigError naming the allowed ones otherwise."""
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone '{name}'; allowed: {', '.join(sorted(BACKBONES))}")
    return BACKBONES[name]


def build_method(name: str, params: Mapping[str, Any] | None, dim: int, depth: int) -> PruningMethod:
    """Validate ``params`` for method ``name`` and build it for a backbone of ``dim`` × ``depth``."""
    cls = method_class(name)
    return cls(parse_params(name, cls.Params, params, depth), dim, depth)
