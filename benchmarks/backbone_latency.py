"""Batch-1 CPU latency of the dense backbone vs each pruning method, beside their MAC ratio.

    python benchmarks/backbone_latency.py [--backbone vit_small --img-size 384 640 --runs 30]

Every method is configured for a patch keep ratio (PKR) of about 0.4 (DynamicViT/TPS ρ = 0.4,
VPP κ = 0.6 / q = 0.7, SViT three-level q = 0.39). The weights are random, so the selectors of
methods with a dynamic keep count (VPP's SMs, SViT) are first calibrated with their *own*
sparsity loss (backbone frozen, half-size frames) so that they keep what their targets say.
Latency: ``torch.inference_mode``, fixed threads, warm-up, then the median of ``--runs`` frames of
one video (VPP carries its state). MACs are counted on the executed graph over the same frames
(``prunebench.evaluation.bench``; ``prunebench bench`` does the same on dataset frames).

A second table compares the two ways of running batch > 1 on the inference path: one padded,
key-masked batch per block (what PrunableViT does) vs a loop of batch-1 calls.
"""

from __future__ import annotations

import argparse
import statistics
import time

import prunebench  # noqa: F401  (torchvision guard before timm)
import torch

from prunebench.evaluation.bench import compare, preset_model
from prunebench.models.presets import pruning_methods


def video(count: int, size: tuple[int, int], seed: int) -> list[torch.Tensor]:
    """A random first frame followed by slightly perturbed copies (a static, noisy video)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(1, 3, *size, generator=g)
    return [base + 0.05 * torch.randn(1, 3, *size, generator=g) for _ in range(count)]


def build(backbone: str, method: str, steps: int, size: tuple[int, int]) -> torch.nn.Module:
    """``method`` at its PKR-0.40 preset, calibrated on two half-size frames."""
    return preset_model(backbone, method, 0.40, video(2, (size[0] // 2, size[1] // 2), seed=123), steps)


def batching_table(backbone: str, size: tuple[int, int], batch: int, runs: int, steps: int) -> list[str]:
    """Per-image latency of a padded batch vs a loop of batch-1 calls."""
    lines = [f"| method | batch {batch} padded, ms/image | {batch} × batch 1, ms/image | padded / loop |",
             "|---|---:|---:|---:|"]
    images = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(1))
    for method in ("dynamicvit", "svit"):
        model = build(backbone, method, steps, size)
        padded, looped = [], []
        with torch.inference_mode():
            for i in range(runs + 2):
                start = time.perf_counter()
                model(images)
                t_padded = time.perf_counter() - start
                start = time.perf_counter()
                for b in range(batch):
                    model(images[b:b + 1])
                t_loop = time.perf_counter() - start
                if i >= 2:
                    padded.append(t_padded * 1e3 / batch)
                    looped.append(t_loop * 1e3 / batch)
        p, q = statistics.median(padded), statistics.median(looped)
        lines.append(f"| {method} | {p:.1f} | {q:.1f} | {p / q:.2f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="vit_small")
    parser.add_argument("--img-size", nargs=2, type=int, default=[384, 640])
    parser.add_argument("--runs", type=int, default=30, help="timed frames per method (>= 30 for the note)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calibration-steps", type=int, default=80)
    parser.add_argument("--batch", type=int, default=4, help="batch of the padded-vs-loop table (0: skip)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    size = tuple(args.img_size)
    frames = [(i == 0, f) for i, f in enumerate(video(args.warmup + args.runs, size, seed=0))]
    models = {m: build(args.backbone, m, args.calibration_steps, size) for m in ["dense", *pruning_methods()]}
    rows = compare(models, frames, args.warmup)
    print(f"\n{args.backbone} at {size[0]}x{size[1]}, batch 1, {args.threads} threads, "
          f"median of {args.runs} frames after {args.warmup} warm-up; GMACs = multiply-accumulates\n")
    print("| method | PKR | GMACs | MAC ratio (dense/method) | median ms | min ms | speedup (dense/method) | speedup / MAC ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for method, r in rows.items():
        print(f"| {method} | {r['pkr']:.3f} | {r['gmacs']:.2f} | {r['gmacs_ratio']:.2f} | {r['latency_ms']:.1f} "
              f"| {r['latency_min_ms']:.1f} | {r['speedup']:.2f} | {r['speedup'] / r['gmacs_ratio']:.2f} |")
    if args.batch > 1:
        print()
        print("\n".join(batching_table(args.backbone, size, args.batch, max(5, args.runs // 3), 15)))


if __name__ == "__main__":
    main()
