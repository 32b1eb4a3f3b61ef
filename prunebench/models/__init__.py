"""The network: prunable ViT backbone, the pruning interface, VPP.

The names below load on first use (PEP 562), so that reading a config or checking a method's
parameters does not import timm and transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BACKBONES": "prunebench.models.registry",
    "build_method": "prunebench.models.registry",
    "method_names": "prunebench.models.registry",
    "BackboneOutput": "prunebench.models.vit",
    "PrunableViT": "prunebench.models.vit",
    "create_backbone": "prunebench.models.vit",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """``prunebench.models.NAME`` for the names of ``__all__``, imported from their module when first asked for."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'prunebench.models' has no attribute '{name}'")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
