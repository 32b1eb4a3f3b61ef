"""Scene-cut recovery (paper §5.4): how fast a method's keep mask finds the objects again after the content changes.

Measured as the frame's IoI, the foreground recall of the keep mask (each instance's share of patches
entering each block, averaged over blocks, then over the frame's instances), against the frames since
the change, under three alignments:

- ``cut``: the scene cuts of the videos (``Video.scene_cuts``: the synthetic videos record theirs; a
  new background and objects that jump). Offset -1 is the last frame before the cut, 0 the first after.
- ``blank``: the paper's protocol. ``lead_in`` textureless white frames (three in the paper) run
  through the model with its temporal state carried, then the video from its first frame (offset 0).
- ``start``: the first frames of every video without any lead-in, the reference for ``blank``.

A frame without a visible instance gives no value; an offset without frames gives None. The paper's
claim is that VPP's mask is back on the objects one frame after the change.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import numpy as np
import torch

#: frames before / after the change that are measured (offsets -1 .. 4)
BEFORE, AFTER = 1, 4
ALIGNMENTS = ("cut", "blank", "start")


def instance_recall(patches: torch.Tensor, block_keep: torch.Tensor) -> np.ndarray:
    """Per block, the share of one instance's ``patches`` ((N,) bool) kept in ``block_keep`` ((depth, N))."""
    return block_keep[:, patches].float().mean(dim=1).numpy()


def frame_ioi(patches: torch.Tensor, block_keep: torch.Tensor) -> float | None:
    """A frame's IoI in percent from its instances' ``patches`` ((n, N) bool); None without a visible instance."""
    recalls = [float(instance_recall(p, block_keep).mean()) for p in patches if bool(p.any())]
    return 100.0 * float(np.mean(recalls)) if recalls else None


def offsets(alignment: str) -> list[int]:
    """The offsets measured under ``alignment``: -BEFORE .. AFTER after a cut, 0 .. AFTER from a video's start."""
    return list(range(-BEFORE if alignment == "cut" else 0, AFTER + 1))


def offset_name(offset: int) -> str:
    """The metric suffix of an offset: ``m1`` for -1, ``0``, ``1``, ..."""
    return f"m{-offset}" if offset < 0 else str(offset)


def cut_offsets(cuts: Iterable[int], t: int) -> list[int]:
    """The offsets of frame ``t`` relative to each cut it lies near (-BEFORE .. AFTER frames)."""
    return [t - cut for cut in cuts if -BEFORE <= t - cut <= AFTER]


class RecoveryMeter:
    """Per alignment and offset, the mean frame IoI over every aligned frame of every video."""

    def __init__(self) -> None:
        self._values: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))

    def add(self, alignment: str, offset: int, ioi: float | None) -> None:
        """One frame's IoI ``offset`` frames after a change of kind ``alignment`` (ignored if None)."""
        if alignment not in ALIGNMENTS:
            raise ValueError(f"alignment must be one of {ALIGNMENTS}, got {alignment!r}")
        if ioi is not None:
            self._values[alignment][offset].append(ioi)

    def add_video_frame(self, cuts: Iterable[int], t: int, ioi: float | None) -> None:
        """Frame ``t`` of a video (no lead-in) with scene ``cuts``: aligned on each cut near it and on the start."""
        for offset in cut_offsets(cuts, t):
            self.add("cut", offset, ioi)
        if t <= AFTER:
            self.add("start", t, ioi)

    def result(self) -> dict[str, dict[str, float | None]]:
        """``{alignment: {offset name: mean IoI (%) or None}}`` for the alignments that saw a change."""
        out = {}
        for alignment in ALIGNMENTS:
            if alignment not in self._values:
                continue
            values = self._values[alignment]
            out[alignment] = {offset_name(k): (float(np.mean(values[k])) if values.get(k) else None)
                              for k in offsets(alignment)}
        return out
