"""Batch-1 backbone latency of dense vs pruned on real frames (``prunebench bench``).

Every method runs at the preset for one goal PKR (``models.presets``). Without trained checkpoints
the weights are random, so the stages of methods with a dynamic keep count (VPP's SMs, SViT) are
first calibrated: their keep thresholds are set so that each keeps its target share of the tokens
(``calibrate``); the measured PKR is reported beside the latency. Frames are timed in video
order (VPP carries its state), after warm-up, median over the timed frames; MACs are counted on
the executed graph over the same frames (their median, as the latency's). Timing and counting run
under the config's ``precision`` (the calibration in fp32).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from prunebench.evaluation.accounting import TokenAccountant
from prunebench.evaluation.flops import backbone_cost
from prunebench.models.presets import params_for_target
from prunebench.models.registry import AdapterName
from prunebench.models.vit import PrunableViT, create_backbone
from prunebench.precision import Precision, autocast


#: the keep-logit offsets the calibration searches (a log-probability margin; ±30 saturates every decision)
OFFSET_BOUND = 30.0


def stage_keep(model: PrunableViT, frames: list[torch.Tensor], position: int) -> float:
    """Share of tokens entering block ``position``, over the frames after the first (one chain of streams,
    state carried, seeded noise, inference path); the first frame only warms the temporal state."""
    generator = torch.Generator().manual_seed(0)
    state, keeps = None, []
    with torch.inference_mode():
        for frame in frames:
            out = model(frame, state=state, generator=generator)
            state = out.state
            keeps.append(out.block_keep[position].float().mean().item())
    measured = keeps[1:] or keeps
    return sum(measured) / len(measured)


def calibrate(model: PrunableViT, frames: list[torch.Tensor], steps: int) -> None:
    """Set every dynamic stage of ``model`` (random weights) to keep its target share of the tokens.

    Stage by stage in block order, a bisection of ``steps`` halvings over an offset added to the stage
    scorer's keep logit (its ``fc2`` bias, channel 0) brings the share of tokens the stage passes on, over
    ``frames`` as one chain (the first frame only warms VPP's state), to its cumulative target. Top-k
    stages keep their target by construction and are left as they are. Gradient descent on the methods'
    own sparsity losses was the earlier way: through hard decisions on random features it missed the
    targets by up to 0.17 PKR (docs/performance.md §1).
    """
    targets = model.method.stage_targets()
    model.eval()
    for position, scorer in sorted(model.method.dynamic_scorers().items()):
        bias = scorer.fc2.bias
        start = bias[0].item()
        low, high = -OFFSET_BOUND, OFFSET_BOUND
        for _ in range(steps):
            middle = (low + high) / 2
            with torch.no_grad():
                bias[0] = start + middle
            if stage_keep(model, frames, position) > targets[position]:
                high = middle
            else:
                low = middle
        with torch.no_grad():
            bias[0] = start + (low + high) / 2


def preset_model(backbone: str, method: str, target: float, calibration_frames: list[torch.Tensor],
                 steps: int, seed: int = 0, adapter: AdapterName = "none") -> PrunableViT:
    """``method`` (``dense``: no pruning) at its preset for goal PKR ``target``, seeded random weights,
    selectors calibrated on ``calibration_frames``; in eval mode."""
    torch.manual_seed(seed)
    params = {} if method == "dense" else params_for_target(method, target)
    model = create_backbone(backbone, method, params, adapter=adapter)
    calibrate(model, calibration_frames, steps)
    return model.eval()


def time_frames(model: PrunableViT, frames: list[tuple[bool, torch.Tensor]], warmup: int,
                precision: Precision = "fp32") -> list[float]:
    """Per-frame latency (ms) over ``(new video?, frame)`` pairs, state carried, after ``warmup`` frames."""
    generator = torch.Generator().manual_seed(0)
    times, state = [], None
    model.eval()
    with torch.inference_mode():
        for i, (first, frame) in enumerate(frames):
            start = time.perf_counter()
            with autocast(precision, "cpu"):
                out = model(frame, state=None if first else state, generator=generator)
            elapsed = (time.perf_counter() - start) * 1e3
            state = out.state
            if i >= warmup:
                times.append(elapsed)
    return times


def cost_over_frames(model: PrunableViT, frames: list[tuple[bool, torch.Tensor]], warmup: int = 0,
                     precision: Precision = "fp32") -> tuple[float, float]:
    """Median GMACs per frame and PKR over the frames after ``warmup`` (inference path: eval mode, state
    carried from the first frame on, noise seeded as in ``time_frames``): the frames ``time_frames`` times.
    The median pairs with the median latency: a window that crosses into a new video holds a stream-first
    frame, which costs VPP more (every token passes its Map-SM) and would lift a mean, not the latency."""
    generator = torch.Generator().manual_seed(0)
    accountant, gmacs, state = TokenAccountant(), [], None
    model.eval()
    for i, (first, frame) in enumerate(frames):
        with autocast(precision, "cpu"):
            cost = backbone_cost(model, frame, state=None if first else state, generator=generator)
        state = cost.output.state
        if i >= warmup:
            accountant.update(cost.output.block_keep)
            gmacs.append(cost.gmacs)
    return statistics.median(gmacs), accountant.pkr


def compare(models: dict[str, PrunableViT], frames: list[tuple[bool, torch.Tensor]], warmup: int,
            precision: Precision = "fp32") -> dict[str, Any]:
    """Latency, speedup and GMACs ratio of every model against ``models['dense']``, all run under ``precision``."""
    rows = {}
    for name, model in models.items():
        gmacs, pkr = cost_over_frames(model, frames, warmup, precision)
        times = time_frames(model, frames, warmup, precision)
        rows[name] = {"latency_ms": statistics.median(times), "latency_min_ms": min(times), "gmacs": gmacs, "pkr": pkr}
    dense = rows["dense"]
    for row in rows.values():
        row["speedup"] = dense["latency_ms"] / row["latency_ms"]
        row["gmacs_ratio"] = dense["gmacs"] / row["gmacs"]
    return rows
