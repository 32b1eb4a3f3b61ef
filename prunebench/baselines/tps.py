"""TPS, joint token pruning and squeezing (Wei et al., CVPR 2023), dTPS variant (docs/methods.md §5).

DynamicViT's predictors and schedule; after each pruning decision the tokens pruned *at this
stage* are squeezed into their most similar kept host (cosine similarity of the block inputs):
``x_j ← (e·x_j + Σ_{i→j} exp(c_ij)·x_i) / (e + Σ_{i→j} exp(c_ij))``. The pruned tokens
themselves stay frozen in the dense map with their own features.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from prunebench.baselines.dynamicvit import DynamicViT, DynamicViTParams
from prunebench.models.pruning import Candidates, FrameContext, Selection
from prunebench.models.registry import register_method


def squeeze(hosts: Tensor, host_valid: Tensor, pruned: Tensor, pruned_weight: Tensor,
            same_tokens: bool = False) -> Tensor:
    """Fuse each pruned token into its most similar valid host; return the new hosts ``(B, r, D)``.

    Args:
        hosts: ``(B, r, D)`` candidate host tokens; ``host_valid`` ``(B, r)`` bool marks real hosts.
        pruned: ``(B, p, D)`` tokens to squeeze; ``pruned_weight`` ``(B, p)`` is 1 for a token
            pruned at this stage, 0 otherwise (straight-through gradients pass through it).
        same_tokens: rows and columns are the same N tokens (the fixed-shape call): the diagonal is masked, so a
            kept token's row matches its nearest *other* kept host, as in the released code. Its weight is 0, so
            no value changes; its gradient is that of squeezing the token there (zero if it matched itself).
    """
    similarity = F.normalize(pruned, dim=-1, eps=1e-6) @ F.normalize(hosts, dim=-1, eps=1e-6).transpose(1, 2)
    invalid = ~host_valid[:, None, :]
    if same_tokens:
        invalid = invalid | torch.eye(hosts.shape[1], dtype=torch.bool, device=hosts.device)
    similarity = similarity.masked_fill(invalid, float("-inf"))
    best, host = similarity.max(dim=-1)
    weight = pruned_weight * torch.exp(best).nan_to_num(0.0)  # (B, p); no valid host → 0
    index = host[..., None].expand(-1, -1, hosts.shape[-1])
    numerator = math.e * hosts + torch.zeros_like(hosts).scatter_add(1, index, weight[..., None] * pruned)
    denominator = math.e + torch.zeros_like(weight[:, :1]).expand(-1, hosts.shape[1]).scatter_add(1, host, weight)
    return torch.where(host_valid[..., None], numerator / denominator[..., None], hosts)


@register_method
class TPS(DynamicViT):
    """DynamicViT plus the squeeze of this stage's pruned tokens into kept hosts."""

    name = "tps"
    Params = DynamicViTParams

    def select(self, position: int, candidates: Candidates, ctx: FrameContext) -> Selection:
        keep = self.decide(position, candidates, ctx)
        tokens, weight = candidates.tokens, candidates.weight
        kept = (keep * weight).detach() > 0.5
        if not ctx.training and tokens.shape[0] == 1:  # compact: only pruned rows × kept columns
            host_idx, pruned_idx = kept[0].nonzero()[:, 0], ((weight[0] > 0.5) & ~kept[0]).nonzero()[:, 0]
            hosts = squeeze(
                tokens[:, host_idx], kept[:, host_idx], tokens[:, pruned_idx], weight[:, pruned_idx],
            )
            return Selection(keep, tokens=tokens.index_copy(1, host_idx, hosts))
        # (1 − d)·w, d = keep·w the cumulative mask: 1 for a token pruned at this stage; its gradient reaches this
        # stage's predictor and the earlier ones' as the released code's match mask does
        pruned_weight = weight * (1.0 - keep * weight)
        return Selection(keep, tokens=squeeze(tokens, kept, tokens, pruned_weight, same_tokens=True))
