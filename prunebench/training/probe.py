"""A fixed probe of training clips on which a fine-tune measures whether it has converged.

The mean training loss of a logging window mixes two things: how far the model still moves, and the
sampling noise of the window's batches. On the CPU benchmark (300 steps, 30-step windows of batches
of 2 clips) the second dominates: runs without a single learned parameter (``random``, ``oracle``)
failed a 5 % loss-change rule in 3 of 18 cases, and DynamicViT's keep jumped by 0.03-0.05 between
windows from the content of the batches alone (``docs/convergence.md``).

The probe removes the sampling noise: at the end of every logging window the model runs, without
gradients, on the same clips of the training split (chosen by a fixed seed, so every trial of a
sweep sees the same ones), in training mode (the selectors' soft decisions and ratio losses as
training sees them) with the random draws of that forward (Gumbel noise, point sampling) taken
from a fixed seed, so that two windows differ only by the model's parameters. Batch-norm layers
run in eval mode there, so the probe never changes the model; the training RNG stream is forked,
so a run with a probe trains exactly as one without. It runs in the training's ``precision``.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from prunebench.data.pipeline import ClipBatch, ClipSampler, collate_clips
from prunebench.models.vis_model import VISModel
from prunebench.precision import Precision, autocast
from prunebench.training.loop import forward_chain

#: the seed that picks the probe's clips and draws its forward's random numbers (the same in every trial)
PROBE_SEED = 0


@dataclass(frozen=True)
class ProbeReading:
    """The probe's task loss and the mean keep entering each pruning position (``"b3"``: input of block 3)."""

    task_loss: float
    stage_keep: dict[str, float]


class Probe:
    """``clips`` training clips, loaded once, measured in batches of ``batch_size``."""

    def __init__(self, sampler: ClipSampler, clips: int, batch_size: int):
        if clips < 1 or batch_size < 1:
            raise ValueError(f"clips and batch_size must be >= 1, got {clips} and {batch_size}")
        fixed = copy.copy(sampler)  # the same data and augmentation, fixed seed and epoch
        fixed.seed, fixed.epoch = PROBE_SEED, 0
        chosen = np.random.default_rng(PROBE_SEED).choice(len(fixed), size=min(clips, len(fixed)), replace=False)
        items = [fixed[int(i)] for i in sorted(chosen)]
        self.batches: list[ClipBatch] = [collate_clips(items[i:i + batch_size]) for i in range(0, len(items), batch_size)]

    @torch.no_grad()
    def measure(self, model: VISModel, device: torch.device, precision: Precision = "fp32") -> ProbeReading:
        """The probe's reading of ``model`` (left in the mode it was in, its RNG stream untouched), its forward
        under ``precision`` (the training's)."""
        sizes = [len(b.frames) for b in self.batches]
        task, keeps = 0.0, {}
        with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []), _batch_norm_frozen(model):
            torch.manual_seed(PROBE_SEED)
            for batch, size in zip(self.batches, sizes):
                with autocast(precision, device):
                    chain = forward_chain(model, batch, device)
                task += float(chain.task) * size
                for stage, keep in chain.stage_keep.items():
                    keeps[stage] = keeps.get(stage, 0.0) + keep * size
        total = sum(sizes)
        return ProbeReading(task / total, {stage: value / total for stage, value in keeps.items()})


@contextlib.contextmanager
def _batch_norm_frozen(model: nn.Module) -> Iterator[None]:
    """Batch-norm layers in eval mode for the duration (their running statistics stay the training's)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    for m in norms:
        m.eval()
    try:
        yield
    finally:
        for m in norms:
            m.train()
