"""Where a training step's time goes, and the step time of each precision, measured in one run.

    python benchmarks/train_step.py [--steps 30 --warmup 5 --precisions fp32 bf16 --stage train]

Runs the demo preset's stage (``train``: the dense model on single frames, batch 4 at 128x224;
``finetune``: DynamicViT from the same random init on 2-frame chains, batch 2) with the real loop
(``prunebench.training.loop.train_steps``) on a small synthetic dataset, once per precision, and
splits each step by wall clock:

- forward phases, timed by forward hooks on the model's parts: backbone, pyramid, pixel decoder,
  transformer decoder, loss + Hungarian matching (Mask2Former's criterion);
- optimizer: ``AdamW.step`` (optimizer step hooks);
- data: reading and decoding the clips (the clip sampler's ``__getitem__``);
- backward + rest: the step's wall time minus all of the above (backward, gradient clipping,
  zero_grad, learning-rate update).

Prints the median per phase over the timed steps and each precision's step time as a ratio to the
first precision's, measured in the same process.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import prunebench  # noqa: F401  (torchvision guard before timm)
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from prunebench.config import load_config
from prunebench.training.loop import train_steps
from prunebench.training.protocol import load_datasets, prepare_stage

PHASES = ("data", "backbone", "pyramid", "pixel decoder", "transformer decoder", "loss + matching", "optimizer")


class PhaseClock:
    """Wall-clock seconds per phase of the current step (hooks start and stop the phases)."""

    def __init__(self) -> None:
        self.current: dict[str, float] = defaultdict(float)
        self._started: dict[str, float] = {}

    def start(self, phase: str) -> None:
        self._started[phase] = time.perf_counter()

    def stop(self, phase: str) -> None:
        self.current[phase] += time.perf_counter() - self._started.pop(phase)

    def take(self) -> dict[str, float]:
        """The finished step's phases (and a fresh clock for the next one)."""
        phases, self.current = dict(self.current), defaultdict(float)
        return phases


def instrument(model: torch.nn.Module, clock: PhaseClock) -> None:
    """Time the model's parts with forward pre/post hooks."""
    head = model.head
    parts = {"backbone": model.backbone, "pyramid": model.pyramid,
             "pixel decoder": head.model.pixel_level_module.decoder,
             "transformer decoder": head.model.transformer_module, "loss + matching": head.criterion}
    for phase, module in parts.items():
        if module is not None:
            module.register_forward_pre_hook(lambda *_, p=phase: clock.start(p))
            module.register_forward_hook(lambda *_, p=phase: clock.stop(p))


class TimedClips(torch.utils.data.Dataset):
    """The stage's clip sampler, with each clip's read and decode timed as the ``data`` phase."""

    def __init__(self, sampler, clock: PhaseClock):
        self.sampler, self.clock = sampler, clock

    def __len__(self) -> int:
        return len(self.sampler)

    def __getitem__(self, index: int):
        self.clock.start("data")
        try:
            return self.sampler[index]
        finally:
            self.clock.stop("data")

    @property
    def epoch(self) -> int:  # the loop sets the epoch of the sampler it reads
        return self.sampler.epoch

    @epoch.setter
    def epoch(self, value: int) -> None:
        self.sampler.epoch = value


def measure(config, stage: str, precision: str, steps: int, warmup: int) -> list[dict[str, float]]:
    """Per-step phases (seconds) of ``steps`` steps after ``warmup`` steps of ``stage`` under ``precision``."""
    config = config.model_copy(update={"precision": precision})
    prepared = prepare_stage(config, stage)
    clock, rows = PhaseClock(), []
    instrument(prepared.model, clock)
    pre = register_optimizer_step_pre_hook(lambda *_: clock.start("optimizer"))
    post = register_optimizer_step_post_hook(lambda *_: clock.stop("optimizer"))

    def on_step(metrics, _state) -> None:
        phases = clock.take()
        if metrics.step > warmup:
            phases["backward + rest"] = metrics.seconds - sum(phases.values())
            rows.append({**phases, "step": metrics.seconds})

    optim = prepared.optim.model_copy(update={"steps": warmup + steps})
    try:
        train_steps(prepared.model, TimedClips(prepared.sampler, clock), optim, config.seed, torch.device("cpu"),
                    on_step=on_step, precision=precision)
    finally:
        pre.remove()
        post.remove()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=["train", "finetune"], default="train")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per precision")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        config = load_config("demo", {
            "out": str(Path(tmp) / "out"), "data.root": str(Path(tmp) / "data"),
            "data.synth": {"videos": 16, "valid_videos": 2, "frames": 12, "height": 128, "width": 224, "seed": 0},
            "method.name": "dynamicvit" if args.stage == "finetune" else "dense",
        })
        load_datasets(config)
        results = {p: measure(config, args.stage, p, args.steps, args.warmup) for p in args.precisions}
    first = args.precisions[0]
    step = {p: statistics.median(r["step"] for r in results[p]) for p in args.precisions}
    batch = config.train.batch_size if args.stage == "train" else config.finetune.batch_size
    print(f"\n{args.stage} stage of the demo preset (vit_tiny, 128x224, batch {batch}), "
          f"{args.threads} threads; median of {args.steps} steps after {args.warmup} warm-up\n")
    print("| phase | " + " | ".join(f"{p} ms" for p in args.precisions) + " | "
          + " | ".join(f"{p} share" for p in args.precisions) + " |")
    print("|---|" + "---:|" * (2 * len(args.precisions)))
    for phase in (*PHASES, "backward + rest", "step"):
        medians = {p: statistics.median(r.get(phase, 0.0) for r in results[p]) for p in args.precisions}
        print(f"| {phase} | " + " | ".join(f"{medians[p] * 1e3:.1f}" for p in args.precisions) + " | "
              + " | ".join(f"{medians[p] / step[p]:.0%}" for p in args.precisions) + " |")
    print("\n| precision | step ms | step time ratio to " + first + " | speedup |")
    print("|---|---:|---:|---:|")
    for p in args.precisions:
        print(f"| {p} | {step[p] * 1e3:.1f} | {step[p] / step[first]:.2f} | {step[first] / step[p]:.2f} |")

if __name__ == "__main__":
    main()
