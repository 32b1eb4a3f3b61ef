"""What counting MACs costs the evaluation's backbone pass, and what counting once per frame size saves.

    python benchmarks/eval_counting.py [--methods dense random dynamicvit tps vpp svit --frames 48 --threads 1]

The evaluation (``prunebench.evaluation.vis_eval``) reports each frame's backbone GMACs counted on the
executed graph (``backbone_cost``: the pass under torch's FlopCounterMode). A method whose kept counts do
not depend on the image runs the same graph on every frame of one size, so ``CountedBackbone`` counts its
first frame of each size and runs the others uncounted. For every method (random weights, the benchmark
preset's frame size 128x224 = 112 tokens, batch 1, temporal state carried, one video of ``--frames``
noisy frames), three ways of running the same frames are timed in one process, in rotated order:

- ``plain``: the backbone alone, nothing counted (the floor);
- ``every frame``: ``backbone_cost`` on every frame (the evaluation before ``CountedBackbone``);
- ``counted``: ``CountedBackbone`` (what the evaluation does now).

Prints ms per frame and each way's ratio to ``plain`` measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import prunebench  # noqa: F401  (torchvision guard before timm)
import torch

from prunebench.evaluation.flops import backbone_cost
from prunebench.evaluation.vis_eval import CountedBackbone
from prunebench.models.vit import create_backbone

PARAMS = {"random": {"rho": 0.7}, "dynamicvit": {"rho": 0.7}, "tps": {"rho": 0.7}}
WAYS = ["plain", "every frame", "counted"]


def _way(name: str, model: torch.nn.Module) -> Callable[..., object]:
    """One way of running the backbone on a frame, returning its output (a new ``CountedBackbone``: a new
    evaluation, whose first frame is counted)."""
    if name == "plain":
        return model
    if name == "every frame":
        return lambda image, **kwargs: backbone_cost(model, image, **kwargs).output
    counted = CountedBackbone(model)
    return lambda image, **kwargs: counted(image, **kwargs)[0]


def _run(frames: list[torch.Tensor], step: Callable[..., object]) -> float:
    """Seconds per frame of ``step(image, state=..., generator=...)`` over the frames, state carried."""
    generator, state = torch.Generator().manual_seed(0), None
    start = time.perf_counter()
    for image in frames:
        output = step(image, state=state, generator=generator)
        state = output.state
    return (time.perf_counter() - start) / len(frames)


def main() -> None:
    """Time the three ways for every method and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=["dense", "random", "dynamicvit", "tps", "vpp", "svit"])
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = torch.rand(1, 3, 128, 224, generator=torch.Generator().manual_seed(0))
    frames = [base + 0.05 * torch.randn(base.shape, generator=torch.Generator().manual_seed(i)) for i in range(args.frames)]
    print(f"backbone pass per frame, vit_tiny 128x224 (112 tokens), batch 1, {args.threads} thread(s), "
          f"{args.frames} frames, median of {args.repeats} rotated repeats\n")
    print("| method | image-dependent | plain ms | every frame ms | counted ms | every frame / plain | counted / plain |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for method in args.methods:
        model = create_backbone("vit_tiny", method, PARAMS.get(method, {})).eval()
        times: dict[str, list[float]] = {name: [] for name in WAYS}
        with torch.inference_mode():
            _run(frames[:3], model)  # warm-up
            for repeat in range(args.repeats):
                for name in WAYS[repeat % 3:] + WAYS[:repeat % 3]:
                    times[name].append(_run(frames, _way(name, model)))
        ms = {name: 1000 * statistics.median(values) for name, values in times.items()}
        print(f"| {method} | {'yes' if model.method.image_dependent else 'no'} | {ms['plain']:.1f} | "
              f"{ms['every frame']:.1f} | {ms['counted']:.1f} | {ms['every frame'] / ms['plain']:.2f} | "
              f"{ms['counted'] / ms['plain']:.2f} |")


if __name__ == "__main__":
    main()
