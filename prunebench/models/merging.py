"""How the backbone runs a ``MergingMethod`` (EViT, ToMe): a sequence that shortens inside blocks.

Inside each block of the method's ``merge_positions`` the attention half runs, the method returns a
``Merge`` (the shorter sequence), and the MLP half runs on it; the other blocks run whole. For every
patch of the grid the backbone keeps which token of the sequence carries it (``source``) or, once the
patch has left the sequence, the features it had then (``frozen``). The output is again the dense
map of all N patches: a patch reads the final features of the token that carries it (ToMe's unmerge:
a merged token is copied back to all its sources) or its frozen features (EViT's inattentive tokens,
frozen like the pruned tokens of the other methods). A token without a patch (EViT's fused token)
is dropped at the output.

With ViT-Adapter (``model.adapter: vit_adapter``) the injector before each interaction stage updates
the dense map, as it does for the pruning methods: every patch gets its own update; a patch off the
sequence keeps its updated features (frozen again until the next injector); a token of the sequence
takes the mean of its patches' updated features (for a token of one patch, exactly that patch's; for
a ToMe token standing for several, their mean, which is what merging those patches would give);
a token without a patch (EViT's fused token) is not updated. The extractors read the dense map.

Every sample keeps the same number of tokens per block, so a batch needs no padding, and the
masked and gather paths are one and the same computation for these methods. Gradients reach the
backbone through the merged features (nothing here is a hard mask with a straight-through
estimator: merging methods have no selectors).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from prunebench.models.pruning import FrameContext, Merge, MergingMethod, StageRecord, TokenGroups, gather_tokens

if TYPE_CHECKING:
    from prunebench.models.adapter import Interaction


@dataclass
class TokenSequence:
    """The running sequence and, per grid patch, where its features are.

    Attributes:
        tokens: ``(B, n, D)`` the sequence.
        size: ``(B, n)`` patches each token stands for, or None while no merge has happened (all 1).
        cell: ``(B, n)`` long, the grid cell each token occupies in the keep mask (−1: none).
        source: ``(B, N)`` long, the token carrying each patch (−1: the patch has left the sequence).
        frozen: ``(B, N, D)`` the features of patches off the sequence: those they had when they left it,
            plus any update of the dense map since (ViT-Adapter's injectors, ``rewritten``).
    """

    tokens: Tensor
    size: Tensor | None
    cell: Tensor
    source: Tensor
    frozen: Tensor

    @classmethod
    def start(cls, x: Tensor) -> TokenSequence:
        """One token per patch, in grid order."""
        batch, n, _ = x.shape
        index = torch.arange(n, device=x.device).expand(batch, -1)
        return cls(x, None, index, index, torch.zeros_like(x))

    def sizes(self) -> Tensor:
        """``(B, n)`` patches each token stands for."""
        return self.tokens.new_ones(self.tokens.shape[:2]) if self.size is None else self.size

    def attention_bias(self) -> Tensor | None:
        """``log size`` of every key as an additive attention bias ``(B, 1, 1, n)`` (None before any merge)."""
        return None if self.size is None else self.size.log()[:, None, None, :]

    def keep_mask(self) -> Tensor:
        """``(B, N)`` 0/1: the grid cells occupied by a token of the sequence."""
        batch, num_patches = self.source.shape
        slot = torch.where(self.cell >= 0, self.cell, num_patches)  # cell-less tokens go to a spare column
        mask = self.tokens.new_zeros(batch, num_patches + 1).scatter_(1, slot, 1.0)
        return mask[:, :num_patches]

    def merged(self, merge: Merge) -> TokenSequence:
        """The sequence after ``merge``, applied to the current ``tokens`` (the post-attention features)."""
        carried = self.source >= 0
        dest = merge.dest.gather(1, self.source.clamp(min=0))
        leaving = carried & (dest < 0)
        frozen = torch.where(leaving[..., None], gather_tokens(self.tokens, self.source.clamp(min=0)), self.frozen)
        source = torch.where(carried, dest, -1)
        moved = merge.dest >= 0
        size = merge.tokens.new_zeros(merge.tokens.shape[:2]).scatter_add_(
            1, merge.dest.clamp(min=0), self.sizes() * moved
        )
        cell = torch.where(merge.host >= 0, self.cell.gather(1, merge.host.clamp(min=0)), -1)
        return TokenSequence(merge.tokens, size, cell, source, frozen)

    def rewritten(self, full: Tensor) -> TokenSequence:
        """The sequence after the dense map became ``full`` ``(B, N, D)``: each token the mean of its
        patches' new features (a token without patches unchanged), each patch off the sequence its own."""
        carried = self.source >= 0
        weight = carried.to(full.dtype)
        slot = self.source.clamp(min=0)
        total = full.new_zeros(self.tokens.shape).scatter_add_(1, slot[..., None].expand_as(full), full * weight[..., None])
        count = weight.new_zeros(self.tokens.shape[:2]).scatter_add_(1, slot, weight)
        tokens = torch.where(count[..., None] > 0, total / count.clamp(min=1)[..., None], self.tokens)
        return replace(self, tokens=tokens, frozen=torch.where(carried[..., None], self.frozen, full))

    def unmerged(self) -> Tensor:
        """``(B, N, D)`` the dense map: each patch's carrying token, or its frozen features."""
        carried = gather_tokens(self.tokens, self.source.clamp(min=0))
        return torch.where((self.source >= 0)[..., None], carried, self.frozen)


def run_merging(
    blocks: nn.ModuleList, x: Tensor, method: MergingMethod, ctx: FrameContext, interaction: Interaction | None = None
) -> tuple[Tensor, list[Tensor]]:
    """Run ``blocks`` (``SplitBlock``s) on the patch tokens ``x`` ``(B, N, D)`` with ``method``'s merges
    (and the adapter's ``interaction``, if any, on the dense map).

    Returns the dense ``(B, N, D)`` map after the last block and, per block, the ``(B, N)`` mask of the
    grid cells whose tokens enter it. One ``StageRecord`` per merge that shortened the sequence is
    appended to ``ctx.records`` (position = the block it ran in; mask = the cells left after it).
    """
    sequence = TokenSequence.start(x)
    merges = set(method.merge_positions)
    block_keep = []
    for i, block in enumerate(blocks):
        if interaction is not None and interaction.injects(i):
            sequence = sequence.rewritten(interaction.before_block(i, sequence.unmerged()))
        block_keep.append(sequence.keep_mask())
        bias = sequence.attention_bias() if method.proportional_attention else None
        if i in merges:
            sequence = _merging_block(block, sequence, bias, method, i, ctx)
        else:
            sequence = replace(sequence, tokens=block(sequence.tokens, attn_mask=bias))
        if interaction is not None and interaction.extracts(i):
            interaction.after_block(i, sequence.unmerged())
    return sequence.unmerged(), block_keep


def _merging_block(block: nn.Module, sequence: TokenSequence, bias: Tensor | None, method: MergingMethod,
                   position: int, ctx: FrameContext) -> TokenSequence:
    """Block ``position`` in halves: attention, the method's merge (recorded if it shortened the sequence), MLP."""
    tokens, keys, probs = block(sequence.tokens, attn_mask=bias, half="attention", probabilities=method.needs_attention)
    sequence = replace(sequence, tokens=tokens)
    merge = method.merge(position, TokenGroups(tokens, sequence.sizes(), keys, probs, ctx.grid), ctx)
    if merge is not None:
        sequence = sequence.merged(merge)
        ctx.records.append(StageRecord(position, sequence.keep_mask(), {}))
    return replace(sequence, tokens=block(sequence.tokens, half="mlp"))
