"""The unpruned reference: no positions, no parameters, no loss."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prunebench.models.pruning import Candidates, FrameContext, PruningMethod, Selection
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

    def select(self, position: int, candidates: Candidates, ctx: FrameContext) -> Selection:
        """Never asked (no positions); keeps every candidate."""
        return Selection(torch.ones_like(candidates.weight))
