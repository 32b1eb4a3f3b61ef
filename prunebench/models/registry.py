"""Registry of pruning methods and backbones: names → classes, with validated construction.

Methods register themselves with ``@register_method`` when their module is imported: the built-in
modules, and the modules that installed packages list in the entry-point group
``prunebench.methods`` (``[project.entry-points."prunebench.methods"] my_method = "my_pkg.my_method"``).
Those are imported when a name is looked up that is not registered yet, and when all names are
listed, so a plug-in works wherever its package is installed (Ray workers included).
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Mapping
from typing import Any, Literal

from prunebench.errors import ConfigError
from prunebench.models.params import parse_params
from prunebench.models.pruning import PruningMethod

_METHODS: dict[str, type[PruningMethod]] = {}
_BUILTIN_MODULES = ("prunebench.models.dense", "prunebench.models.vpp", "prunebench.baselines")
#: entry-point group naming the modules of plug-in methods
ENTRY_POINT_GROUP = "prunebench.methods"

#: backbone name -> (timm model name, embedding dim, heads, depth)
BACKBONES: dict[str, tuple[str, int, int, int]] = {
    "vit_tiny": ("vit_tiny_patch16_224", 192, 3, 12),
    "vit_small": ("vit_small_patch16_224", 384, 6, 12),
}

#: what surrounds the ViT: nothing (a simple pyramid in the VIS model) or ViT-Adapter (``models.adapter``)
AdapterName = Literal["none", "vit_adapter"]


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register_method(cls: type[PruningMethod]) -> type[PruningMethod]:
    """Class decorator: make a method available by its ``name``; a name taken by another class is refused."""
    taken = _METHODS.get(cls.name)
    if taken is not None and _qualified(taken) != _qualified(cls):
        raise ConfigError(f"method name '{cls.name}' of {_qualified(cls)} is taken by {_qualified(taken)}; "
                          "allowed: a name not yet registered")
    _METHODS[cls.name] = cls
    return cls


def _import_plugins() -> None:
    """Import the modules of the entry-point group ``prunebench.methods`` (each registers its methods)."""
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry.load()
        except Exception as error:  # any failure of foreign code: one line naming the plug-in
            raise ConfigError(f"plug-in method '{entry.name}' ({entry.value}, entry point {ENTRY_POINT_GROUP}) "
                              f"cannot be loaded: {type(error).__name__}: {error}") from None


def method_names() -> list[str]:
    """Names of all registered methods, built-in and plug-in, sorted."""
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)
    _import_plugins()
    return sorted(_METHODS)


def method_class(name: str) -> type[PruningMethod]:
    """The class registered as ``name`` (importing the built-in and plug-in modules if it is not yet
    registered); ConfigError naming the allowed ones otherwise."""
    if name not in _METHODS:
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
