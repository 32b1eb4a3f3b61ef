"""Pictures of evaluations: the keep masks of a few frames (an MLflow artifact of every run)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402

from prunebench.atomic import atomic_path  # noqa: E402


@dataclass
class KeepExample:
    """One frame (uint8 RGB at model input size) and its keep masks ``(depth, h, w)``."""

    image: np.ndarray
    block_keep: np.ndarray


def keep_mask_figure(examples: list[KeepExample], blocks: list[int], path: str | Path, title: str = "") -> Path:
    """Grid: one row per frame, one column per block in ``blocks``; pruned patches darkened."""
    rows, cols = len(examples), len(blocks) + 1
    figure, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 1.5 * rows), squeeze=False)
    for r, example in enumerate(examples):
        axes[r][0].imshow(example.image)
        axes[r][0].set_ylabel(f"frame {r}", fontsize=8)
        h, w = example.image.shape[:2]
        for c, block in enumerate(blocks, start=1):
            keep = example.block_keep[block]
            up = np.kron(keep, np.ones((h // keep.shape[0], w // keep.shape[1])))[:h, :w]
            shaded = example.image.astype(np.float32) * (0.25 + 0.75 * up[..., None])
            axes[r][c].imshow(shaded.astype(np.uint8))
            if r == 0:
                axes[r][c].set_title(f"block {block}: {keep.mean():.0%}", fontsize=8)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=80)
    plt.close(figure)
    return Path(path)
