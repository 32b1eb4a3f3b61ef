"""ToMe, token merging (Bolya et al., ICLR 2023), without a class token, on dense maps (docs/methods.md §7.2).

Inside **every** block, between the attention residual and the MLP, bipartite soft matching merges
``r`` tokens:

1. the metric is the block's attention keys averaged over heads, L2-normalised;
2. the sequence is split alternately into A (tokens 0, 2, 4, …) and B (tokens 1, 3, …); every
   a ∈ A picks its most similar b ∈ B (cosine of the metric);
3. the ``r`` a's with the most similar partners are merged into them by size-weighted averaging,
   ``x_b ← (s_b·x_b + Σ s_a·x_a) / (s_b + Σ s_a)``, ``s_b ← s_b + Σ s_a``; the other a's stay;
4. the new sequence is [unmerged A, B], the unmerged A in their original order: what the released
   code does for models with a class token (DeiT; without one it leaves them in order of
   similarity, which only changes the next block's alternate split).

``r`` is capped at half the current tokens (at most every a merges). Sizes (patches per token) are
tracked, and **proportional attention** adds ``log s`` of each key to the attention logits of every
block. At the output the backbone **unmerges**: each patch receives the final features of the token
it was merged into, so the dense map has all N patches again. With ``r = 0`` nothing is merged and
the backbone is exactly the dense one. No parameters, no loss.

``r`` is ToMe's parameter, an absolute count per block. Because a fixed count prunes a different
share of a small and of a large grid, ``rate`` (when given, it replaces ``r``) merges a fixed
fraction of the full grid instead: by the end of block l, ⌊(l + 1)·rate·N⌋ tokens have been merged
(per-block counts are the differences, each capped as above). The benchmark's keep family uses
``rate``, so its PKR does not depend on the frame size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prunebench.errors import ConfigError
from prunebench.models.pruning import FrameContext, Merge, MergingMethod, TokenGroups, gather_tokens
from prunebench.models.registry import register_method

#: tokens of the 224×224 grid, on which ToMe's absolute ``r`` was defined (stage targets for ``r``)
REFERENCE_TOKENS = 196
MAX_RATE = 0.5


@dataclass(frozen=True)
class ToMeParams:
    """Parameters of ToMe (default: the released DeiT-S setting, r = 13)."""

    r: int = 13
    rate: float | None = None

    def validate(self, method: str, depth: int) -> None:
        """``r`` >= 0; ``rate`` in [0, 0.5] when given."""
        if self.r < 0:
            raise ConfigError(f"{method}: r={self.r} is negative; allowed: an integer >= 0")
        if self.rate is not None and not 0.0 <= self.rate <= MAX_RATE:
            raise ConfigError(f"{method}: rate={self.rate} is outside [0, {MAX_RATE}]; allowed: a fraction in [0, {MAX_RATE}]")


def bipartite_merge(groups: TokenGroups, r: int) -> Merge:
    """Merge ``r`` tokens of ``groups`` by bipartite soft matching on their head-averaged keys."""
    tokens, size = groups.tokens, groups.size
    batch, n, dim = tokens.shape
    metric = F.normalize(groups.keys.mean(dim=1), dim=-1)
    similarity = metric[:, ::2] @ metric[:, 1::2].transpose(1, 2)  # (B, |A|, |B|)
    best, partner = similarity.max(dim=-1)
    ranked = best.argsort(dim=1, descending=True)
    merged, stay = ranked[:, :r], ranked[:, r:].sort(dim=1).values
    num_stay = stay.shape[1]
    # B tokens absorb their merged a's: size-weighted sums, then divided by the summed sizes
    target = partner.gather(1, merged)
    a_weighted, b_weighted = (tokens * size[..., None])[:, ::2], (tokens * size[..., None])[:, 1::2]
    b_sum = b_weighted.scatter_add(1, target[..., None].expand(-1, -1, dim), gather_tokens(a_weighted, merged))
    b_size = size[:, 1::2].scatter_add(1, target, size[:, ::2].gather(1, merged))
    new_tokens = torch.cat([gather_tokens(tokens[:, ::2], stay), b_sum / b_size[..., None]], dim=1)
    # where every old token's patches go: A that stay → their slot; merged A → their partner; B → own slot
    num_b = n // 2
    a_dest = torch.empty_like(ranked)
    a_dest.scatter_(1, stay, torch.arange(num_stay, device=tokens.device).expand(batch, -1))
    a_dest.scatter_(1, merged, num_stay + target)
    b_dest = num_stay + torch.arange(num_b, device=tokens.device).expand(batch, -1)
    dest = torch.empty(batch, n, dtype=torch.long, device=tokens.device)
    dest[:, ::2], dest[:, 1::2] = a_dest, b_dest
    host = torch.cat([2 * stay, 2 * torch.arange(num_b, device=tokens.device).expand(batch, -1) + 1], dim=1)
    return Merge(new_tokens, dest, host)


@register_method
class ToMe(MergingMethod):
    """Bipartite soft matching in every block, proportional attention, unmerge at the output."""

    name = "tome"
    Params = ToMeParams
    proportional_attention = True

    @property
    def merge_positions(self) -> tuple[int, ...]:
        """Every block, unless nothing is ever merged (then the backbone is the dense one)."""
        active = self.params.r > 0 if self.params.rate is None else self.params.rate > 0
        return tuple(range(self.depth)) if active else ()

    def merged_count(self, position: int, tokens: int, num_tokens: int) -> int:
        """Tokens merged inside block ``position`` with ``tokens`` in the sequence, on a grid of ``num_tokens``."""
        if self.params.rate is None:
            wanted = self.params.r
        else:
            done = math.floor(position * self.params.rate * num_tokens + 1e-9)
            wanted = math.floor((position + 1) * self.params.rate * num_tokens + 1e-9) - done
        return min(wanted, tokens // 2)

    def stage_targets(self) -> dict[int, float]:
        """Block l → fraction of the grid entering it: with ``rate``, f ← max(f − rate, f/2) per block;
        with ``r``, the counts on the 224×224 grid (``REFERENCE_TOKENS``)."""
        targets, kept = {}, float(REFERENCE_TOKENS)
        for block in self.merge_positions[:-1]:
            if self.params.rate is None:
                kept -= min(self.params.r, kept // 2)
            else:
                kept = max(kept - self.params.rate * REFERENCE_TOKENS, kept / 2)
            targets[block + 1] = kept / REFERENCE_TOKENS
        return targets

    def merge(self, position: int, groups: TokenGroups, ctx: FrameContext) -> Merge | None:
        """Merge this block's count of tokens; None when it is 0."""
        r = self.merged_count(position, groups.tokens.shape[1], groups.num_tokens)
        return bipartite_merge(groups, r) if r > 0 else None
