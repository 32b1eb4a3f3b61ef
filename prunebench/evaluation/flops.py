"""Multiply-accumulates (MACs) counted on the executed graph with torch's FlopCounterMode.

Convention (the published tables' fvcore style): one multiply-accumulate = 1 MAC; a LayerNorm
counts 5 MACs per element; softmax, GELU, element-wise ops, pooling, gather/scatter count 0.
FlopCounterMode counts 2 FLOPs per multiply-add, so MACs = FLOPs / 2. Two operators it does not
know are mapped: CPU fused attention (``_scaled_dot_product_flash_attention_for_cpu``, the same
formula as the CUDA kernels) and ``native_layer_norm`` (10 FLOPs = 5 MACs per element).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils import flop_counter


def _cpu_sdpa_flops(query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    return flop_counter.sdpa_flop_count(query, key, value)


def _layer_norm_flops(input_shape: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    return 10 * math.prod(input_shape)


_MAPPING = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
    torch.ops.aten.native_layer_norm: _layer_norm_flops,
}


@dataclass
class MacCount:
    """MACs of one call: the total and the share of each module (FlopCounterMode's paths)."""

    total: float
    by_module: dict[str, float]

    def within(self, prefix: str) -> float:
        """MACs spent inside the module ``prefix`` (a FlopCounterMode module path)."""
        return self.by_module.get(prefix, 0.0)


def count_macs(fn: Callable[[], Any]) -> tuple[MacCount, Any]:
    """Run ``fn()`` once under the counter; return its MACs and its result."""
    counter = flop_counter.FlopCounterMode(display=False, depth=None, custom_mapping=_MAPPING)
    with counter:
        result = fn()
    by_module = {name: sum(ops.values()) / 2 for name, ops in counter.get_flop_counts().items()}
    return MacCount(total=counter.get_total_flops() / 2, by_module=by_module), result


@dataclass
class BackboneCost:
    """Cost of one backbone pass at batch 1, in GMACs, and the output it produced."""

    gmacs: float
    gmacs_pruner: float
    output: Any


def backbone_cost(model: torch.nn.Module, images: torch.Tensor, **forward_kwargs: Any) -> BackboneCost:
    """Count one inference pass of a ``PrunableViT``; split off the pruner's own MACs.

    The pruner's share is everything outside the ViT's patch embedding, blocks and final norm
    (selectors, Map-SM association, TPS squeeze).
    """
    root = type(model).__name__
    with torch.inference_mode():
        macs, output = count_macs(lambda: model(images, **forward_kwargs))
    vit_parts = [f"{root}.vit.patch_embed", f"{root}.vit.norm"]
    vit_parts += [f"{root}.vit.blocks.{i}" for i in range(len(model.vit.blocks))]
    backbone = sum(macs.within(name) for name in vit_parts)
    return BackboneCost(gmacs=macs.total / 1e9, gmacs_pruner=(macs.total - backbone) / 1e9, output=output)
