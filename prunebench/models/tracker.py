"""Online VIS tracking by query matching across frames (MinVIS style, docs/methods.md §8.1).

Frame t's query embeddings are matched to the previous frame's already-aligned embeddings with
the Hungarian algorithm (scipy) on the cosine cost, and frame t's outputs are permuted so that a
query slot means the same instance over time. At the end of the video each slot's class logits
are averaged over frames; the top-k (slot, class) pairs by softmax probability become the video's
tracks, with the slot's per-frame masks (logits > 0). Duplicates are removed by class-aware NMS on
the tracks' spatio-temporal mask IoU (threshold ``nms_iou``, 0.7 as in ROVIS's tracker; 1.0 keeps all).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from scipy.optimize import linear_sum_assignment
from torch import Tensor


class QueryTracker:
    """Aligns per-frame Mask2Former queries over one video; call ``reset`` between videos."""

    def __init__(self, top_k: int = 10, nms_iou: float = 0.7):
        self.top_k = top_k
        self.nms_iou = nms_iou
        self.reset()

    def reset(self) -> None:
        """Forget the current video."""
        self._embeddings: Tensor | None = None
        self._logits: list[Tensor] = []
        self._masks: list[Tensor] = []

    def step(self, class_logits: Tensor, mask_logits: Tensor, embeddings: Tensor) -> Tensor:
        """Add one frame (``(Q, C+1)``, ``(Q, h, w)``, ``(Q, E)``, any float dtype: matched and scored in fp32);
        return the slot order used."""
        embeddings = embeddings.float()
        if self._embeddings is None:
            order = torch.arange(embeddings.shape[0])
        else:
            cost = 1.0 - F.normalize(embeddings, dim=-1) @ F.normalize(self._embeddings, dim=-1).T
            rows, cols = linear_sum_assignment(cost.cpu().numpy())
            order = torch.empty(embeddings.shape[0], dtype=torch.long)
            order[torch.as_tensor(cols)] = torch.as_tensor(rows)  # slot j takes current query rows[i]
        self._embeddings = embeddings[order]
        self._logits.append(class_logits[order].float().cpu())
        self._masks.append(mask_logits[order].to(torch.float16).cpu())
        return order

    def finish(self, video_id: int, content_hw: tuple[int, int], output_hw: tuple[int, int],
               category_ids: list[int]) -> list[dict[str, Any]]:
        """Tracks of the video in the YouTube-VIS results format.

        Args:
            video_id: id written into each result.
            content_hw: size of the resized frame inside the padded model input.
            output_hw: original video size the masks are written at.
            category_ids: dataset category id of each class index.
        """
        if not self._logits:
            return []
        probs = torch.softmax(torch.stack(self._logits).mean(0), dim=-1)[:, :-1]  # (Q, C)
        scores, flat = probs.flatten().topk(min(self.top_k, probs.numel()))
        tubes = torch.stack(self._masks, dim=1) > 0  # (Q, T, h, w) at mask resolution
        kept: list[tuple[int, int]] = []
        results = []
        for score, index in zip(scores.tolist(), flat.tolist()):
            slot, cls = divmod(index, probs.shape[1])
            if any(c == cls and _tube_iou(tubes[slot], tubes[s]) > self.nms_iou for s, c in kept):
                continue
            kept.append((slot, cls))
            segmentations = [self._to_rle(m[slot], content_hw, output_hw) for m in self._masks]
            results.append({"video_id": video_id, "category_id": category_ids[cls], "score": score,
                            "segmentations": segmentations})
        self.reset()
        return results

    @staticmethod
    def _to_rle(mask_logits: Tensor, content_hw: tuple[int, int], output_hw: tuple[int, int]) -> dict[str, Any] | None:
        h, w = content_hw
        logits = F.interpolate(mask_logits.float()[None, None], scale_factor=4, mode="bilinear", align_corners=False)
        logits = logits[..., :h, :w]
        if (h, w) != tuple(output_hw):
            logits = F.interpolate(logits, size=output_hw, mode="bilinear", align_corners=False)
        mask = logits[0, 0] > 0
        if not bool(mask.any()):
            return None
        rle = mask_utils.encode(np.asfortranarray(mask.numpy().astype(np.uint8)))
        return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _tube_iou(a: Tensor, b: Tensor) -> float:
    """Spatio-temporal IoU of two boolean mask tubes ``(T, h, w)``."""
    union = (a | b).sum()
    return float((a & b).sum() / union) if union > 0 else 0.0
