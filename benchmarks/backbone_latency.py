"""Batch-1 CPU latency of the dense backbone vs each pruning method, beside their MAC ratio.

    python benchmarks/backbone_latency.py [--backbone vit_small --img-size 384 640 --runs 30]

Every method is configured for a patch keep ratio (PKR) of about 0.4 (DynamicViT/TPS ρ = 0.4,
VPP κ = 0.6 / q = 0.7, SViT three-level q = 0.39). The weights are random, so the selectors of
methods with a dynamic keep count (VPP's SMs, SViT) are first calibrated with their *own*
sparsity loss for a few steps (backbone frozen, smaller frames) so that they keep what their
targets say. Latency: ``torch.inference_mode``, fixed threads, warm-up, then the median of
``--runs`` timed frames of one video (VPP carries its state from frame to frame). MACs are counted
on the executed graph (``prunebench.evaluation.flops``) over the same frames.

A second table compares the two ways of running batch > 1 on the inference path: one padded,
key-masked batch per block (what PrunableViT does) vs a loop of batch-1 calls.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import prunebench  # noqa: F401  (torchvision guard before timm)
from prunebench.evaluation.accounting import TokenAccountant
from prunebench.evaluation.flops import backbone_cost
from prunebench.models import create_backbone

CONFIGS = {
    "dense": {},
    "dynamicvit": {"rho": 0.4},
    "tps": {"rho": 0.4},
    "svit": {"q": 0.39},
    "vpp": {"kappa": 0.6, "q": 0.7},
}


def frames_of_a_video(count: int, size: tuple[int, int], seed: int) -> list[torch.Tensor]:
    """A random first frame followed by slightly perturbed copies (a static, noisy video)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(1, 3, *size, generator=g)
    return [base + 0.05 * torch.randn(1, 3, *size, generator=g) for _ in range(count)]


def calibrate(model: torch.nn.Module, steps: int, size: tuple[int, int]) -> None:
    """Fit only the selectors to their keep targets with the method's own loss."""
    selectors = list(model.method.parameters())
    if not selectors or not model.method.image_dependent:
        return
    for p in model.vit.parameters():
        p.requires_grad_(False)
    optimizer = torch.optim.Adam(selectors, lr=0.05)
    model.train()
    frames = frames_of_a_video(2, size, seed=123)
    for _ in range(steps):
        state, loss = None, 0.0
        for frame in frames:
            out = model(frame.expand(2, -1, -1, -1), state=state)
            state, loss = out.state, loss + out.loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def time_video(model: torch.nn.Module, frames: list[torch.Tensor], warmup: int) -> list[float]:
    """Per-frame latency in ms over a video (state carried), after ``warmup`` untimed frames."""
    generator = torch.Generator().manual_seed(0)
    times, state = [], None
    with torch.inference_mode():
        for i, frame in enumerate(frames):
            start = time.perf_counter()
            out = model(frame, state=state, generator=generator)
            elapsed = (time.perf_counter() - start) * 1e3
            state = out.state
            if i >= warmup:
                times.append(elapsed)
    return times


def video_cost(model: torch.nn.Module, frames: list[torch.Tensor]) -> tuple[float, float]:
    """Mean GMACs per frame and PKR over ``frames`` (state carried, seeded noise)."""
    generator = torch.Generator().manual_seed(0)
    accountant, gmacs, state = TokenAccountant(), [], None
    for frame in frames:
        cost = backbone_cost(model, frame, state=state, generator=generator)
        accountant.update(cost.output.block_keep)
        gmacs.append(cost.gmacs)
        state = cost.output.state
    return statistics.fmean(gmacs), accountant.pkr


def batching_table(backbone: str, size: tuple[int, int], batch: int, runs: int) -> list[str]:
    """Per-image latency of a padded batch vs a loop of batch-1 calls, for each pruning method."""
    lines = [
        f"| method | batch {batch} padded, ms/image | {batch} × batch 1, ms/image | padded / loop |",
        "|---|---:|---:|---:|",
    ]
    images = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(1))
    for method in ("dynamicvit", "svit"):
        torch.manual_seed(0)
        model = create_backbone(backbone, method, CONFIGS[method])
        calibrate(model, 15, (size[0] // 2, size[1] // 2))
        model.eval()
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
        p, l_ = statistics.median(padded), statistics.median(looped)
        lines.append(f"| {method} | {p:.1f} | {l_:.1f} | {p / l_:.2f} |")
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
    frames = frames_of_a_video(args.warmup + args.runs, size, seed=0)
    rows = {}
    for method, params in CONFIGS.items():
        torch.manual_seed(0)
        model = create_backbone(args.backbone, method, params)
        calibrate(model, args.calibration_steps, (size[0] // 2, size[1] // 2))
        model.eval()
        gmacs, pkr = video_cost(model, frames[: min(len(frames), 8)])
        times = time_video(model, frames, args.warmup)
        rows[method] = (pkr, gmacs, statistics.median(times), min(times))
        print(f"measured {method}: PKR {pkr:.3f}, {gmacs:.2f} GMACs, median {rows[method][2]:.1f} ms", flush=True)

    dense_gmacs, dense_ms = rows["dense"][1], rows["dense"][2]
    print(f"\n{args.backbone} at {size[0]}x{size[1]}, batch 1, {args.threads} threads, "
          f"median of {args.runs} frames after {args.warmup} warm-up; GMACs = multiply-accumulates\n")
    print("| method | PKR | GMACs | MAC ratio (dense/method) | median ms | min ms | speedup (dense/method) | speedup / MAC ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for method, (pkr, gmacs, median, fastest) in rows.items():
        mac_ratio, speedup = dense_gmacs / gmacs, dense_ms / median
        print(f"| {method} | {pkr:.3f} | {gmacs:.2f} | {mac_ratio:.2f} | {median:.1f} | {fastest:.1f} "
              f"| {speedup:.2f} | {speedup / mac_ratio:.2f} |")
    if args.batch > 1:
        print()
        print("\n".join(batching_table(args.backbone, size, args.batch, max(5, args.runs // 3))))


if __name__ == "__main__":
    main()
