"""The unpruned reference: no positions, no parameters, no loss."""

from __future__ import annotations

from dataclasses import dataclass

from prunebench.models.pruning import PruningMethod
from prunebench.models.registry import register_method


@dataclass(frozen=True)
class DenseParams:
    """The dense model has no parameters."""

    def validate(self, method: str, depth: int) -> None:
        """Nothing to check."""


@register_method
class Dense(PruningMethod):
    """Every token enters every block."""

    name = "dense"
    Params = DenseParams
