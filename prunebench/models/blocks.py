"""The backbone's transformer block: timm's pre-norm ViT block that can also run one residual half at a time.

Merging methods (EViT, ToMe) change the sequence between a block's attention residual and its MLP
and read the attention's keys or probabilities. ``SplitBlock`` is timm's ``Block`` (same parameters,
same state-dict keys, the same computation as timm's ``forward``) whose ``forward`` can instead run
only the attention half (returning keys and, on request, probabilities) or only the MLP half. Both
halves are calls of the block module itself, so the MAC counter (``evaluation/flops.py``) attributes
them to the block like a whole call. Its attention runs on the kernel ``models/attention.py`` picks
(timm would always take PyTorch's fused one, which is slow for short bf16 sequences in training on a CPU).
"""

from __future__ import annotations

from typing import Literal

from timm.layers import Attention
from timm.models.vision_transformer import Block
from torch import Tensor

from prunebench.models.attention import scaled_dot_product

Half = Literal["whole", "attention", "mlp"]


def attend(attn: Attention, x: Tensor, bias: Tensor | None, probabilities: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    """timm's multi-head self-attention on ``x`` (already normed), also returning its keys.

    Covers timm's ``Attention`` as the ViT-T/S configurations build it (optional q/k norms and scale
    norm; no output gate).

    Returns ``(output (B, n, D), keys (B, heads, n, D/heads), probabilities (B, heads, n, n) or None)``.
    ``bias`` is an additive attention mask broadcast to the logits. The output is computed as timm
    computes it (fused attention when timm uses it) unless the probabilities are asked for; then
    explicitly (same MACs: QKᵀ and AV). The fused attention runs on the kernel ``scaled_dot_product`` picks.
    """
    batch, n, _ = x.shape
    q, k, v = attn.qkv(x).reshape(batch, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    probs = None
    if attn.fused_attn and not probabilities:
        out = scaled_dot_product(q, k, v, bias, attn.attn_drop.p if attn.training else 0.0)
    else:
        logits = (q * attn.scale) @ k.transpose(-2, -1)
        probs = (logits if bias is None else logits + bias).softmax(dim=-1)
        out = attn.attn_drop(probs) @ v
    out = attn.norm(out.transpose(1, 2).reshape(batch, n, attn.attn_dim))
    return attn.proj_drop(attn.proj(out)), k, probs


class SplitBlock(Block):
    """timm's ``Block``; ``half`` selects the whole block (default), its attention half or its MLP half."""

    def forward(  # type: ignore[override]
        self,
        x: Tensor,
        attn_mask: Tensor | None = None,
        half: Half = "whole",
        probabilities: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor, Tensor | None]:
        """``whole``: timm's block, ``x + Attn(LN(x))`` then ``+ MLP(LN(·))``. ``attention``: ``(x + Attn(LN(x)),
        keys, probabilities or None)``. ``mlp``: ``x + MLP(LN(x))``. ``attn_mask`` is an additive bias on the
        attention logits."""
        if half == "mlp":
            return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        out, keys, probs = attend(self.attn, self.norm1(x), attn_mask, probabilities)
        x = x + self.drop_path1(self.ls1(out))
        if half == "whole":
            return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x, keys, probs
