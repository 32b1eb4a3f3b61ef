"""PyTorch's fused attention kernel against the math kernel on this CPU, by sequence length, precision and pass.

    python benchmarks/attention_kernels.py [--tokens 32 64 112 160 196 240 320 480 960 --heads 3 --batch 4]

One attention call shaped as in a ViT block (``(batch, heads, tokens, 64)`` queries, keys and values cut
from one ``qkv`` tensor as timm cuts them), timed in one process on both kernels
(``SDPBackend.FLASH_ATTENTION`` and ``SDPBackend.MATH``), in float32 and bfloat16, forward only
(inference) and forward + backward (training); median of ``--runs`` calls after a warm-up, each pair of
kernels in alternating order. Prints milliseconds and fused ÷ math per case (above 1: the math kernel is
faster), and marks the cases where ``prunebench.models.attention`` runs the math kernel. This is the
measurement behind ``MATH_BELOW_TOKENS``; run it on another CPU to see whether its crossing point holds there.
"""

from __future__ import annotations

import argparse
import statistics
import time

import prunebench  # noqa: F401  (torchvision guard before timm)
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from prunebench.models.attention import uses_math_kernel

KERNELS = {"fused": SDPBackend.FLASH_ATTENTION, "math": SDPBackend.MATH}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def time_call(batch: int, heads: int, tokens: int, dtype: torch.dtype, train: bool, kernel: SDPBackend,
              runs: int, warmup: int) -> float:
    """Median ms of one attention call (``train``: forward + backward) on ``kernel``."""
    qkv = torch.randn(batch, tokens, 3 * heads * 64, dtype=dtype, requires_grad=train)
    times = []
    with sdpa_kernel(kernel), torch.set_grad_enabled(train):
        for i in range(warmup + runs):
            start = time.perf_counter()
            q, k, v = qkv.reshape(batch, tokens, 3, heads, 64).permute(2, 0, 3, 1, 4).unbind(0)
            out = F.scaled_dot_product_attention(q, k, v)
            if train:
                out.sum().backward()
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def chosen_kernel(batch: int, heads: int, tokens: int, dtype: torch.dtype, train: bool) -> str:
    """The kernel prunebench's blocks run for this case."""
    q = torch.zeros(batch, heads, tokens, 64, dtype=dtype, requires_grad=train)
    with torch.set_grad_enabled(train):
        return "math" if uses_math_kernel(q) else "fused"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", nargs="+", type=int, default=[32, 64, 112, 160, 196, 240, 320, 480, 960])
    parser.add_argument("--heads", type=int, default=3, help="3: vit_tiny, 6: vit_small")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--runs", type=int, default=25)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if min(args.tokens) < 1 or args.heads < 1 or args.batch < 1 or args.runs < 1:
        parser.error("--tokens, --heads, --batch and --runs must be >= 1")
    torch.set_num_threads(args.threads)
    print(f"attention, batch {args.batch}, {args.heads} heads of 64, {args.threads} threads, median of {args.runs} "
          f"calls; ms per call; fused ÷ math > 1: the math kernel is faster; * the kernel prunebench runs\n")
    print("| pass | precision | tokens | fused ms | math ms | fused ÷ math |")
    print("|---|---|---:|---:|---:|---:|")
    for train in (True, False):
        for name, dtype in DTYPES.items():
            for tokens in args.tokens:
                ms = {}
                for kernel in (list(KERNELS) if tokens % 2 else list(reversed(KERNELS))):
                    ms[kernel] = time_call(args.batch, args.heads, tokens, dtype, train, KERNELS[kernel], args.runs,
                                           args.warmup)
                chosen = chosen_kernel(args.batch, args.heads, tokens, dtype, train)
                cells = {k: f"{v:.3f}{' *' if k == chosen else ''}" for k, v in ms.items()}
                print(f"| {'forward + backward' if train else 'forward'} | {name} | {tokens} | {cells['fused']} | "
                      f"{cells['math']} | {ms['fused'] / ms['math']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
