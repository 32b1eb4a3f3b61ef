"""Multiply-accumulates (MACs) counted on the executed graph with torch's FlopCounterMode.

Convention (the published tables' fvcore style): one multiply-accumulate = 1 MAC; a LayerNorm
counts 5 MACs per element; softmax, GELU, element-wise ops, pooling, gather/scatter count 0.
FlopCounterMode counts 2 FLOPs per multiply-add, so MACs = FLOPs / 2. Operators it does not
know are mapped: CPU fused attention (``_scaled_dot_product_flash_attention_for_cpu``, the same
formula as the CUDA kernels), ``native_layer_norm`` (10 FLOPs = 5 MACs per element) and
``grid_sampler`` (the sampling of multi-scale deformable attention, ViT-Adapter's): **5 MACs per
sampled value**, 4 for the bilinear interpolation (fvcore's rule) plus 1 for the multiply-add with
its attention weight, which the deformable attention does as an element-wise product and sum the
counter does not see. BatchNorm, max pooling and ``interpolate`` count 0 (element-wise/resampling).
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


def _grid_sampler_flops(input_shape: Any, grid_shape: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    batch, channels = input_shape[:2]
    return 2 * 5 * batch * channels * math.prod(grid_shape[1:-1])


_MAPPING = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
    torch.ops.aten.native_layer_norm: _layer_norm_flops,
    # inference mode dispatches the composite ``grid_sampler``, autograd mode its 2-D kernel
    torch.ops.aten.grid_sampler: _grid_sampler_flops,
    torch.ops.aten.grid_sampler_2d: _grid_sampler_flops,
}


@dataclass
class MacCount:
    """MACs of one call: the total and the share of each module (FlopCounterMode's paths)."""

    total: float
    by_module: dict[str, float]

    def within(self, prefix: str) -> float:
        """MACs spent inside the module ``prefix`` (a FlopCounterMode module path)."""
        return self.by_module.get(prefix, 0.0)

    def below(self, prefix: str) -> float:
        """MACs spent inside ``prefix`` or its submodules, each op once: also for a module that was never
        called itself (only its children were), which has no entry of its own."""
        names = [n for n in self.by_module if n == prefix or n.startswith(prefix + ".")]
        outermost = [n for n in names if not any(n.startswith(other + ".") for other in names)]
        return sum(self.by_module[n] for n in outermost)


def count_macs(fn: Callable[[], Any]) -> tuple[MacCount, Any]:
    """Run ``fn()`` once under the counter; return its MACs and its result."""
    counter = flop_counter.FlopCounterMode(display=False, depth=None, custom_mapping=_MAPPING)
    with counter:
        result = fn()
    by_module = {name: sum(ops.values()) / 2 for name, ops in counter.get_flop_counts().items()}
    return MacCount(total=counter.get_total_flops() / 2, by_module=by_module), result


@dataclass
class BackboneCost:
    """Cost of one backbone pass at batch 1, in GMACs, and the output it produced.

    ``gmacs`` is the whole pass (ViT, adapter, pruner); ``gmacs_adapter`` and ``gmacs_pruner`` are
    the shares of the adapter (0 without one) and of the pruner within it.
    """

    gmacs: float
    gmacs_pruner: float
    output: Any
    gmacs_adapter: float = 0.0


def backbone_cost(model: torch.nn.Module, images: torch.Tensor, **forward_kwargs: Any) -> BackboneCost:
    """Count one inference pass of a ``PrunableViT``; split off the adapter's and the pruner's MACs.

    The adapter's share is everything run inside its modules (spatial prior, injectors, extractors,
    output pyramid); the pruner's is everything outside the ViT's patch embedding, blocks and final
    norm and outside the adapter (selectors, Map-SM association, TPS squeeze).
    """
    root = type(model).__name__
    with torch.inference_mode():
        macs, output = count_macs(lambda: model(images, **forward_kwargs))
    vit_parts = [f"{root}.vit.patch_embed", f"{root}.vit.norm"]
    vit_parts += [f"{root}.vit.blocks.{i}" for i in range(len(model.vit.blocks))]
    backbone = sum(macs.within(name) for name in vit_parts)
    adapter = macs.below(f"{root}.adapter")  # its parts run between the blocks, the adapter itself is never called
    return BackboneCost(gmacs=macs.total / 1e9, gmacs_pruner=(macs.total - backbone - adapter) / 1e9, output=output,
                        gmacs_adapter=adapter / 1e9)
