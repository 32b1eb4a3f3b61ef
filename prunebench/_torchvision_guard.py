"""Make ``import timm`` work when torchvision's compiled operators cannot load.

Why this exists: timm imports torchvision at import time. On the CPU-only machines of this
project the only reachable torchvision wheels are CUDA builds. Their C extension fails to load
against the CPU build of torch, and torchvision's ``_meta_registrations`` then calls
``torch.library.register_fake("torchvision::nms")`` for an operator that was never defined, so
``import torchvision`` (and with it ``import timm``) raises ``RuntimeError: operator
torchvision::nms does not exist``.

What it does: if torchvision is installed and its ``_C`` extension loads, nothing (a GPU node with
a matching torchvision is left exactly as it was). Only if loading the extension fails does it
define the schemas of the two operators that the meta registrations need (``nms`` and ``qnms``),
with a pure-torch CPU kernel for ``nms``, so torchvision imports. Nothing in prunebench calls a
compiled torchvision operator; timm only needs torchvision's Python parts.

It must run before the first ``import torchvision`` / ``import timm``; ``prunebench/__init__.py``
imports it first.
"""

from __future__ import annotations

import importlib.util
import os

import torch

_LIBRARY: torch.library.Library | None = None  # keeps the operator definitions alive


def _nms_cpu(dets: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression in plain torch (boxes as x1, y1, x2, y2)."""
    order = scores.argsort(descending=True)
    keep: list[int] = []
    x1, y1, x2, y2 = dets.unbind(1)
    areas = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    for rank, i in enumerate(order.tolist()):
        if suppressed[rank]:
            continue
        keep.append(i)
        rest = order[rank + 1:]
        w = (torch.minimum(x2[i], x2[rest]) - torch.maximum(x1[i], x1[rest])).clamp(min=0)
        h = (torch.minimum(y2[i], y2[rest]) - torch.maximum(y1[i], y1[rest])).clamp(min=0)
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter).clamp(min=1e-12)
        suppressed[rank + 1:] |= iou > iou_threshold
    return torch.tensor(keep, dtype=torch.long)


def install() -> bool:
    """Define the missing torchvision operator schemas if its extension cannot load.

    Returns True if the guard acted, False if torchvision is absent or its ops loaded normally.
    """
    global _LIBRARY
    if _LIBRARY is not None:
        return True
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return False
    package_dir = list(spec.submodule_search_locations)[0]
    extensions = [f for f in os.listdir(package_dir) if f.startswith("_C") and f.endswith(".so")]
    if extensions:
        try:
            torch.ops.load_library(os.path.join(package_dir, extensions[0]))
            return False
        except (OSError, RuntimeError):
            pass
    library = torch.library.Library("torchvision", "DEF")
    library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    library.impl("nms", _nms_cpu, "CPU")
    _LIBRARY = library
    return True


ACTIVE = install()
