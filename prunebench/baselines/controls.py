"""Two controls without learned parameters: ``random`` and ``oracle`` token pruning.

Both follow DynamicViT's schedule (``rho``, ``positions``): from the s-th position on exactly
⌊N·ρ^s⌋ tokens stay, chosen among the tokens still active (no reactivation), in training and in
inference alike, with no gradients and no loss.

- ``random`` keeps a uniformly random subset.
- ``oracle`` keeps the ground-truth foreground patches first (in random order among them), then
  random background patches. It reads ``FrameContext.foreground`` (the caller's ``foreground=``,
  built by ``prunebench.data.pipeline.foreground_patches``), which only the benchmark's
  evaluation has.

The random scores (float64, so ties practically never occur) are drawn over the full token grid
from ``ctx.generator`` and then read at the candidates, so the masked and gather paths make the
same choice for the same generator state.
"""

from __future__ import annotations

import torch
from torch import Tensor

from prunebench.baselines.dynamicvit import ScheduledMethod, ScheduleParams
from prunebench.errors import ConfigError
from prunebench.models.pruning import Candidates, FrameContext, Selection, topk_mask
from prunebench.models.registry import register_method


class ScheduledControl(ScheduledMethod):
    """Fixed counts ⌊N·ρ^s⌋ by top-k of ``priority + uniform noise`` among the active candidates."""

    Params = ScheduleParams

    def priority(self, candidates: Candidates, ctx: FrameContext) -> Tensor | float:
        """Priority ``(B, N)`` over the full grid (or a scalar): higher whole numbers are kept first;
        the uniform noise in [0, 1) orders tokens of equal priority."""
        return 0.0

    def select(self, position: int, candidates: Candidates, ctx: FrameContext) -> Selection:
        weight = candidates.weight
        shape = (weight.shape[0], candidates.num_tokens)
        noise = torch.rand(shape, generator=ctx.generator, device=weight.device, dtype=torch.float64)
        scores = (noise + self.priority(candidates, ctx)).gather(1, candidates.index)
        keep = topk_mask(scores, self.stage_count(position, candidates), weight)
        return Selection(keep.to(weight.dtype))


@register_method
class RandomPruning(ScheduledControl):
    """A uniformly random subset of the active tokens at each stage."""

    name = "random"


@register_method
class OraclePruning(ScheduledControl):
    """Ground-truth foreground patches first, then random background patches."""

    name = "oracle"
    needs_foreground = True

    def priority(self, candidates: Candidates, ctx: FrameContext) -> Tensor:
        """1 for foreground patches, 0 for background ones; ConfigError without a foreground mask."""
        if ctx.foreground is None:
            raise ConfigError(
                "oracle needs the ground-truth foreground patch mask (foreground=); "
                "only the benchmark's evaluation supplies it"
            )
        expected = (candidates.weight.shape[0], candidates.num_tokens)
        if tuple(ctx.foreground.shape) != expected:
            raise ValueError(f"foreground has shape {tuple(ctx.foreground.shape)}; expected {expected}")
        return ctx.foreground.float()
