"""SViT (Liu et al., WACV 2024), docs/methods.md §3.

One selector (LN → D→D/4 → GELU → 2) per position (default blocks 3..11). Each selector sees all
tokens, including stale ones, and decides afresh (reactivation); the keep count is dynamic.
Training: hard Gumbel-softmax (τ); inference: the same sampling (``stochastic_inference``, as the
released code runs) or the deterministic rule p_keep > p_drop. Loss: batch-level keep-ratio error
per position, averaged, times ``ratio_weight``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from prunebench.errors import ConfigError
from prunebench.models.params import check_positions, check_positive, check_ratio
from prunebench.models.pruning import (
    Candidates,
    FrameContext,
    PruningMethod,
    Selection,
    TokenMLP,
    hard_gumbel_keep,
    ratio_error,
)
from prunebench.models.registry import register_method


@dataclass(frozen=True)
class SViTParams:
    """SViT's parameters. ``targets`` (one per position) overrides the three-level ``q`` schedule."""

    positions: tuple[int, ...] = (3, 4, 5, 6, 7, 8, 9, 10, 11)
    targets: tuple[float, ...] | None = None
    q: float = 0.7
    ratio_weight: float = 4.0
    tau: float = 1.0
    stochastic_inference: bool = True

    def validate(self, method: str, depth: int) -> None:
        """Check positions, targets and weights."""
        check_positions(method, "positions", self.positions, depth)
        check_ratio(method, "q", self.q)
        if self.targets is not None:
            if len(self.targets) != len(self.positions):
                raise ConfigError(
                    f"{method}: targets has {len(self.targets)} entries for {len(self.positions)} "
                    "positions; allowed: one target per position"
                )
            for t in self.targets:
                check_ratio(method, "targets", t)
        check_positive(method, "ratio_weight", self.ratio_weight, allow_zero=True)
        check_positive(method, "tau", self.tau)

    @property
    def resolved_targets(self) -> tuple[float, ...]:
        """Per-position targets: ``targets``, or q, q², q³ over three equal groups of positions."""
        if self.targets is not None:
            return self.targets
        n = len(self.positions)
        return tuple(self.q ** (3 * k // n + 1) for k in range(n))


@register_method
class SViT(PruningMethod):
    """Selectors with reactivation and a dynamic keep count."""

    name = "svit"
    Params = SViTParams
    reactivates = True
    image_dependent = True

    def __init__(self, params: SViTParams, dim: int, depth: int):
        super().__init__(params, dim, depth)
        self.selectors = nn.ModuleList(TokenMLP(dim, dim // 4) for _ in params.positions)
        self._stage = {p: i for i, p in enumerate(params.positions)}

    @property
    def positions(self) -> tuple[int, ...]:
        return self.params.positions

    def stage_targets(self) -> dict[int, float]:
        """Position → its resolved target (fraction of all N tokens; every token is a candidate)."""
        return dict(zip(self.params.positions, self.params.resolved_targets))

    def learned_stages(self) -> tuple[int, ...]:
        """Every selector is trained toward its target by the ratio loss."""
        return self.params.positions

    def dynamic_scorers(self) -> dict[int, TokenMLP]:
        """Every selector decides token by token."""
        return dict(zip(self.params.positions, self.selectors))

    def select(self, position: int, candidates: Candidates, ctx: FrameContext) -> Selection:
        log_probs = self.selectors[self._stage[position]](candidates.tokens)
        keep = hard_gumbel_keep(
            log_probs,
            noise_scale=1.0,
            temperature=self.params.tau,
            noise=ctx.training or self.params.stochastic_inference,
            generator=ctx.generator,
            gradient=ctx.training,
        )
        return Selection(keep)

    def loss(self, ctx: FrameContext) -> Tensor:
        """ratio_weight · mean over positions of the batch-level keep-ratio error."""
        errors = [ratio_error(r.keep, t) for r, t in zip(ctx.records, self.params.resolved_targets)]
        return self.params.ratio_weight * torch.stack(errors).mean()
