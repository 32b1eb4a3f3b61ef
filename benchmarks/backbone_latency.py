"""CPU latency of the dense backbone vs each pruning method, beside their MAC ratio, at several frame sizes.

    python benchmarks/backbone_latency.py [--backbone vit_tiny --tokens 112 240 510 960 --batches 1 4 --runs 20]

Every method is configured for a patch keep ratio (PKR) of about 0.4 (DynamicViT/TPS ρ = 0.4,
VPP κ = 0.6 / q = 0.7, SViT three-level q = 0.39). The weights are random, so the selectors of
methods with a dynamic keep count (VPP's SMs, SViT) are first calibrated: each such stage's keep
threshold is set by bisection so that it keeps its target share of the tokens over four 64x112 frames
of one video; the same calibrated models then run at every frame size (their measured PKR is printed
beside each row). Each
table ends with a ceiling row, ``dense, fewer tokens``: the dense backbone on a smaller frame with
about 40 % of the tokens (its PKR column is that share), timed against the full frame: what a shorter
sequence alone buys on this machine, with no selector, gather or scatter.
Frame sizes by token count: 112 = 128x224 (the demo's), 240 = 192x320, 510 = 272x480,
960 = 384x640. Latency: ``torch.inference_mode``, fixed threads, warm-up, then the median of
``--runs`` frames of one video (VPP carries its state), taken ``--repeats`` times with the models in
rotated orders (the median of those medians is the row's latency); a batch of B is B streams of that video
(B noisy copies), the latency per batch. MACs are counted on the executed graph over the same frames
(``prunebench.evaluation.bench``; ``prunebench bench`` does the same on dataset frames). Each
table's ratios are to the dense backbone measured in the same run; the summary table gives speedup ÷
MAC ratio (1.0: the wall clock falls exactly as the MACs do).

A last table compares the two ways of running batch > 1 on the inference path: one padded,
key-masked batch per block (what PrunableViT does) vs a loop of batch-1 calls.
"""

from __future__ import annotations

import argparse
import statistics
import time

import prunebench  # noqa: F401  (torchvision guard before timm)
import torch

from prunebench.evaluation.bench import compare, preset_model, time_frames
from prunebench.models.presets import pruning_methods


TOKEN_SIZES = {112: (128, 224), 240: (192, 320), 510: (272, 480), 960: (384, 640)}


def video(count: int, size: tuple[int, int], seed: int, batch: int = 1) -> list[torch.Tensor]:
    """A random first frame followed by slightly perturbed copies (a static, noisy video), ``batch`` streams."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(1, 3, *size, generator=g)
    return [base + 0.05 * torch.randn(batch, 3, *size, generator=g) for _ in range(count)]


def build(backbone: str, method: str, steps: int) -> torch.nn.Module:
    """``method`` at its PKR-0.40 preset, calibrated on four 64x112 frames of one video."""
    return preset_model(backbone, method, 0.40, video(4, (64, 112), seed=123), steps)


def fewer_tokens(dense: torch.nn.Module, full: dict, size: tuple[int, int], batch: int, runs: int,
                 warmup: int, keep: float = 0.4) -> dict:
    """The ceiling: the dense backbone on a frame with about ``keep`` of the tokens (same aspect), as a row
    whose ratios are to the full frame's. No selector, gather or scatter: what a shorter sequence alone
    gives on this machine."""
    scale = keep ** 0.5
    small = tuple(max(16, round(side * scale / 16) * 16) for side in size)
    frames = [(i == 0, f) for i, f in enumerate(video(warmup + runs, small, seed=0, batch=batch))]
    row = compare({"dense": dense}, frames, warmup)["dense"]
    row["pkr"] = small[0] * small[1] / (size[0] * size[1])
    row["speedup"] = full["latency_ms"] / row["latency_ms"]
    row["gmacs_ratio"] = full["gmacs"] / row["gmacs"]
    return row


def size_table(models: dict[str, torch.nn.Module], tokens: int, batch: int, runs: int, warmup: int,
               threads: int, repeats: int) -> dict[str, dict]:
    """Print one (frame size, batch) table; return its rows."""
    size = TOKEN_SIZES[tokens]
    frames = [(i == 0, f) for i, f in enumerate(video(warmup + runs, size, seed=0, batch=batch))]
    rows = compare(models, frames, warmup)
    names = list(models)
    latencies = {name: [rows[name]["latency_ms"]] for name in names}
    fastest = {name: [rows[name]["latency_min_ms"]] for name in names}
    for order in range(1, repeats):  # again, in a rotated order: drifts of the machine hit every model alike
        for name in names[order % len(names):] + names[:order % len(names)]:
            times = time_frames(models[name], frames, warmup)
            latencies[name].append(statistics.median(times))
            fastest[name].append(min(times))
    for name, row in rows.items():
        row["latency_ms"] = statistics.median(latencies[name])
        row["latency_min_ms"] = min(fastest[name])  # the fastest frame of every repeat, not of the first only
    for row in rows.values():
        row["speedup"] = rows["dense"]["latency_ms"] / row["latency_ms"]
    rows["dense, fewer tokens"] = fewer_tokens(models["dense"], rows["dense"], size, batch, runs, warmup)
    print(f"\n{tokens} tokens ({size[0]}x{size[1]}), batch {batch}, {threads} threads, median over {repeats} "
          f"rotated repeats of the median of {runs} frames after {warmup} warm-up; GMACs = multiply-accumulates per image\n")
    print("| method | PKR | GMACs | MAC ratio (dense/method) | median ms | min ms | speedup (dense/method) | speedup / MAC ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for method, r in rows.items():
        print(f"| {method} | {r['pkr']:.3f} | {r['gmacs'] / batch:.3f} | {r['gmacs_ratio']:.2f} | {r['latency_ms']:.1f} "
              f"| {r['latency_min_ms']:.1f} | {r['speedup']:.2f} | {r['speedup'] / r['gmacs_ratio']:.2f} |")
    return rows


def batching_table(backbone: str, size: tuple[int, int], batch: int, runs: int, steps: int) -> list[str]:
    """Per-image latency of a padded batch vs a loop of batch-1 calls."""
    lines = [f"| method | batch {batch} padded, ms/image | {batch} × batch 1, ms/image | padded / loop |",
             "|---|---:|---:|---:|"]
    images = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(1))
    for method in ("dynamicvit", "svit"):
        model = build(backbone, method, steps)
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
    parser.add_argument("--backbone", default="vit_tiny")
    parser.add_argument("--tokens", nargs="+", type=int, default=list(TOKEN_SIZES), choices=list(TOKEN_SIZES))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 4])
    parser.add_argument("--methods", nargs="+", default=pruning_methods(), choices=pruning_methods())
    parser.add_argument("--runs", type=int, default=20, help="timed frames per method and table")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="timings of every model per table, in rotated orders")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calibration-steps", type=int, default=20,
                        help="bisection halvings of each dynamic stage's keep threshold")
    parser.add_argument("--padding-batch", type=int, default=0, help="batch of the padded-vs-loop table (0: skip)")
    args = parser.parse_args()
    if any(b < 1 for b in args.batches):
        parser.error(f"--batches {args.batches}: every batch must be >= 1")
    torch.set_num_threads(args.threads)
    models = {m: build(args.backbone, m, args.calibration_steps) for m in ["dense", *args.methods]}
    summary = {(t, b): size_table(models, t, b, args.runs, args.warmup, args.threads, args.repeats)
               for t in args.tokens for b in args.batches}
    print(f"\nSummary ({args.backbone}, fp32): speedup ÷ MAC ratio per method, tokens × batch\n")
    columns = list(summary)
    print("| method | " + " | ".join(f"{t} tok, b{b}" for t, b in columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for method in [*args.methods, "dense, fewer tokens"]:
        cells = [summary[c][method]["speedup"] / summary[c][method]["gmacs_ratio"] for c in columns]
        print(f"| {method} | " + " | ".join(f"{v:.2f}" for v in cells) + " |")
    if args.padding_batch > 1:
        print()
        print("\n".join(batching_table(args.backbone, TOKEN_SIZES[args.tokens[-1]], args.padding_batch,
                                    max(5, args.runs // 3), 15)))


if __name__ == "__main__":
    main()
