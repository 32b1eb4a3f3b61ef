"""EViT (Liang et al., ICLR 2022) without a class token, on dense maps (docs/methods.md §7.1).

Inside each block of ``positions`` (default 3, 6, 9), between the attention residual and the MLP,
EViT keeps the ⌈κ·n⌉ most attended tokens of the current sequence of n tokens (κ = ``kappa``,
relative to the current count; a fused token of an earlier stage competes like any other token)
and, with ``fuse``, fuses the others into one token ``Σ_j a_j·x_j`` weighted by their (not
renormalised) attention scores ``a_j``, appended to the sequence.

The score: EViT ranks patches by the class token's attention, averaged over heads. prunebench's
backbone has no class token; the **mean attention over all query tokens** (averaged over heads)
replaces it: ``a_j = mean_{h,i} A_h[i, j]``, the attention token j receives on average, read from
the block's own attention map (it sums to 1 over the keys, as one attention row does).

On the dense map the inattentive tokens keep the features they had when they were dropped (after
that block's attention residual), as the pruned tokens of the other methods do; the fused token
stands for no patch and is dropped at the output. No parameters, no loss, the same fixed counts in
training and inference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from prunebench.models.params import check_positions, check_ratio
from prunebench.models.pruning import FrameContext, Merge, MergingMethod, TokenGroups, gather_tokens
from prunebench.models.registry import register_method


@dataclass(frozen=True)
class EViTParams:
    """Parameters of EViT (defaults: the paper's DeiT-S setting with fusion)."""

    kappa: float = 0.7
    positions: tuple[int, ...] = (3, 6, 9)
    fuse: bool = True

    def validate(self, method: str, depth: int) -> None:
        """Check the keep rate and the positions."""
        check_ratio(method, "kappa", self.kappa)
        check_positions(method, "positions", self.positions, depth)


def attentiveness(attention: Tensor) -> Tensor:
    """``(B, n)`` mean attention each token receives: over heads and over all query tokens."""
    return attention.mean(dim=(1, 2))


@register_method
class EViT(MergingMethod):
    """Keep the most attended tokens inside blocks 3, 6, 9; fuse the others into one token."""

    name = "evit"
    Params = EViTParams
    needs_attention = True

    @property
    def merge_positions(self) -> tuple[int, ...]:
        return self.params.positions

    def stage_targets(self) -> dict[int, float]:
        """Block after each position → κ^s (the fused token and the ceiling ignored)."""
        return {
            p + 1: self.params.kappa ** (s + 1) for s, p in enumerate(self.params.positions) if p + 1 < self.depth
        }

    def merge(self, position: int, groups: TokenGroups, ctx: FrameContext) -> Merge | None:
        """The ⌈κ·n⌉ most attended tokens in their order, then the fused token; None if all stay."""
        if groups.attention is None:
            raise ValueError("EViT needs the block's attention probabilities")
        tokens = groups.tokens
        batch, n, _ = tokens.shape
        count = math.ceil(self.params.kappa * n - 1e-9)
        if count >= n:
            return None
        score = attentiveness(groups.attention)
        kept = score.topk(count, dim=1).indices.sort(dim=1).values
        slots = torch.arange(count, device=tokens.device).expand(batch, -1)
        dest = torch.full((batch, n), -1, dtype=torch.long, device=tokens.device).scatter(1, kept, slots)
        new_tokens, host = gather_tokens(tokens, kept), kept
        if self.params.fuse:
            weight = score.masked_fill(dest >= 0, 0.0)
            fused = (weight[..., None] * tokens).sum(dim=1, keepdim=True)
            new_tokens = torch.cat([new_tokens, fused], dim=1)
            host = torch.cat([kept, kept.new_full((batch, 1), -1)], dim=1)
        return Merge(new_tokens, dest, host)
