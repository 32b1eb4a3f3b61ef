"""DynamicViT (Rao et al., NeurIPS 2021), adapted to dense maps as docs/methods.md §4 (§4.4) says.

Predictors on the inputs of ``positions`` (default 3, 6, 9) score the still-active tokens with a
local feature and the mask-weighted mean of the active tokens as global feature (no class token).
Training: hard Gumbel-softmax (τ) times the previous mask; inference: the top ⌊N·ρ^s⌋ tokens by
keep score. Pruned tokens are frozen and stay in the dense map (not discarded). Loss: the
per-sample keep-ratio error against ρ^s, averaged over stages, times ``ratio_weight``.
No distillation. The schedule (``ScheduleParams``, ``ScheduledMethod``: ρ, positions, fixed
counts) is shared with TPS and the random/oracle controls.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prunebench.models.params import check_positions, check_positive, check_ratio
from prunebench.models.pruning import (
    Candidates,
    FrameContext,
    PruningMethod,
    Selection,
    hard_gumbel_keep,
    keep_count,
    ratio_error,
    topk_mask,
)
from prunebench.models.registry import register_method


@dataclass(frozen=True)
class ScheduleParams:
    """A geometric keep schedule: ⌊N·ρ^s⌋ of all N tokens from the s-th position on."""

    rho: float = 0.7
    positions: tuple[int, ...] = (3, 6, 9)

    def validate(self, method: str, depth: int) -> None:
        """Check the keep ratio and the positions."""
        check_ratio(method, "rho", self.rho)
        check_positions(method, "positions", self.positions, depth)

    @property
    def targets(self) -> tuple[float, ...]:
        """Absolute keep ratios ρ^s of the stages, s = 1..S."""
        return tuple(self.rho ** (s + 1) for s in range(len(self.positions)))


@dataclass(frozen=True)
class DynamicViTParams(ScheduleParams):
    """Parameters of DynamicViT and TPS (defaults: the official code)."""

    ratio_weight: float = 2.0
    tau: float = 1.0

    def validate(self, method: str, depth: int) -> None:
        """Check the schedule and the weights."""
        super().validate(method, depth)
        check_positive(method, "ratio_weight", self.ratio_weight, allow_zero=True)
        check_positive(method, "tau", self.tau)


class ScheduledMethod(PruningMethod):
    """A method on a ``ScheduleParams`` schedule: one stage per position, target ρ^s each."""

    def __init__(self, params: ScheduleParams, dim: int, depth: int):
        super().__init__(params, dim, depth)
        self._stage = {p: i for i, p in enumerate(params.positions)}

    @property
    def positions(self) -> tuple[int, ...]:
        return self.params.positions

    def stage_targets(self) -> dict[int, float]:
        """Position → ρ^s."""
        return dict(zip(self.params.positions, self.params.targets))

    def stage_count(self, position: int, candidates: Candidates) -> int:
        """The fixed count ⌊N·ρ^s⌋ of the stage at ``position``."""
        return keep_count(candidates.num_tokens, self.params.targets[self._stage[position]])


class Predictor(nn.Module):
    """DynamicViT's "PredictorLG" without class token: local half + masked-mean global half."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc_in = nn.Linear(dim, dim)
        self.head = nn.Sequential(
            nn.Linear(dim, dim // 2), nn.GELU(),
            nn.Linear(dim // 2, dim // 4), nn.GELU(),
            nn.Linear(dim // 4, 2),
        )

    def forward(self, tokens: Tensor, weight: Tensor) -> Tensor:
        """Two-class log-probabilities ``(B, n, 2)`` (channel 0 = keep); ``weight`` = active mask."""
        h = F.gelu(self.fc_in(self.norm(tokens)))
        local, glob = h.chunk(2, dim=-1)
        w = weight[..., None]
        glob = (glob * w).sum(dim=1, keepdim=True) / w.sum(dim=1, keepdim=True).clamp(min=1e-6)
        return F.log_softmax(self.head(torch.cat([local, glob.expand_as(local)], dim=-1)), dim=-1)


@register_method
class DynamicViT(ScheduledMethod):
    """Three (by default) predictors; fixed top-k counts at inference."""

    name = "dynamicvit"
    Params = DynamicViTParams

    def __init__(self, params: DynamicViTParams, dim: int, depth: int):
        super().__init__(params, dim, depth)
        self.predictors = nn.ModuleList(Predictor(dim) for _ in params.positions)

    def learned_stages(self) -> tuple[int, ...]:
        """Every predictor is trained toward its ρ^s by the ratio loss."""
        return self.params.positions

    def decide(self, position: int, candidates: Candidates, ctx: FrameContext) -> Tensor:
        """Keep decision over the candidates (Gumbel in training, top-k ⌊N·ρ^s⌋ in inference)."""
        stage = self._stage[position]
        log_probs = self.predictors[stage](candidates.tokens, candidates.weight)
        if ctx.training:
            return hard_gumbel_keep(
                log_probs, noise_scale=1.0, temperature=self.params.tau, noise=True,
                generator=ctx.generator,
            )
        return topk_mask(log_probs[..., 0], self.stage_count(position, candidates), candidates.weight)

    def select(self, position: int, candidates: Candidates, ctx: FrameContext) -> Selection:
        return Selection(self.decide(position, candidates, ctx))

    def loss(self, ctx: FrameContext) -> Tensor:
        """ratio_weight · mean over stages of the per-sample keep-ratio error against ρ^s."""
        errors = [ratio_error(r.keep, t, per_sample=True) for r, t in zip(ctx.records, self.params.targets)]
        return self.params.ratio_weight * torch.stack(errors).mean()
