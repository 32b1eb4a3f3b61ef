"""Token accounting: tokens entering each block, per-block keep ratio and PKR (paper Eq. 8).

PKR = (1/L) Σ_l n_l / N, with n_l the tokens entering block l, averaged over *every* evaluated
frame (a global mean, not the official code's 20-frame sliding window): each frame's fractions weigh
the same, whatever its size.
"""

from __future__ import annotations

import torch
from torch import Tensor


class TokenAccountant:
    """Accumulates the ``(depth, B, N)`` keep masks of many frames into global per-block means."""

    def __init__(self) -> None:
        self._kept: Tensor | None = None  # (depth,) summed kept tokens
        self._fractions: Tensor | None = None  # (depth,) summed per-frame kept fractions
        self.frames = 0

    def update(self, block_keep: Tensor) -> None:
        """Add one backbone pass: ``block_keep`` is ``(depth, B, N)`` with 1 = token entered."""
        kept = block_keep.detach().to(torch.float64).sum(dim=2).cpu()  # (depth, B)
        fractions = (kept / block_keep.shape[2]).sum(dim=1)
        kept = kept.sum(dim=1)
        self._kept = kept if self._kept is None else self._kept + kept
        self._fractions = fractions if self._fractions is None else self._fractions + fractions
        self.frames += block_keep.shape[1]

    @property
    def per_block_keep(self) -> list[float]:
        """Mean over every frame seen of the fraction of its tokens entering each block."""
        if self._fractions is None:
            raise ValueError("no frame was accounted")
        return (self._fractions / self.frames).tolist()

    @property
    def per_block_tokens(self) -> list[float]:
        """Mean number of tokens entering each block per frame."""
        if self._kept is None:
            raise ValueError("no frame was accounted")
        return (self._kept / self.frames).tolist()

    @property
    def pkr(self) -> float:
        """Patch keep ratio: the mean over blocks of the per-block keep fraction."""
        keep = self.per_block_keep
        return sum(keep) / len(keep)
