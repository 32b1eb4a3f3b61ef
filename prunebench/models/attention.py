"""The attention kernel: PyTorch's fused scaled-dot-product attention, except where it is slow on a CPU.

On a CPU, PyTorch's fused (flash) kernel runs the backward pass of a short bfloat16 sequence at about
half the speed of the plain matrix-product kernel (``SDPBackend.MATH``), while it wins on long
sequences, in float32 and in every forward-only pass (``benchmarks/attention_kernels.py`` measures
each case; docs/performance.md §2 has the table). So a block trained in bf16 on a CPU on fewer than
``MATH_BELOW_TOKENS`` tokens runs the math kernel; everything else runs the fused one. Both compute
the same function (``QKᵀ``, softmax, ``AV``; the math kernel accumulates bf16 inputs in float32 as the
fused one does) and the MAC counter counts both alike.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

#: sequence length (tokens) below which a bf16 training pass on a CPU runs the math kernel
MATH_BELOW_TOKENS = 224


def uses_math_kernel(q: Tensor) -> bool:
    """Whether ``scaled_dot_product`` runs the math kernel for queries ``q`` ``(B, heads, n, d)``."""
    return (q.device.type == "cpu" and q.dtype == torch.bfloat16 and q.requires_grad and torch.is_grad_enabled()
            and q.shape[-2] < MATH_BELOW_TOKENS)


def scaled_dot_product(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None, dropout_p: float = 0.0) -> Tensor:
    """``F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p)`` on the faster kernel."""
    if uses_math_kernel(q):
        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p)
