"""Full evaluation of a VIS model on a split: the numbers every leaderboard row comes from.

One pass over the videos in order (batch 1, temporal state carried, reset per video, selector
noise seeded) produces the tracks (``results.json``, official format), PKR / per-block keep, IoI
and the backbone's GMACs per frame (counted on the executed graph). A second pass times the
backbone and the whole model (backbone + pyramid + head + tracker step) per frame: fixed threads,
warm-up frames, median over ≥ ``timing_frames`` frames; CUDA events on a GPU. Both passes run the
model under the config's ``precision`` (``prunebench.precision``: autocast for bf16 / fp16); what it
outputs is read in fp32 (tracking, scores, keep masks for PKR and IoI).

IoI (paper Eq. 9): for every non-crowd ground-truth instance and every frame it is present in, the
fraction of its patches that enter each block, averaged over blocks, then over the instance's
frames, then over instances. A patch belongs to the instance if **any** pixel of its (resized,
padded) mask falls inside the 16×16 patch. S/M/L use the YouTube-VIS ranges (128², 256²) on the
instance's mean area at the video's resolution; a bucket without instances is None. ``per_block``
is the same recall block by block (how much of the objects VPP's Map-SM keeps at blocks 1–2, say),
and ``fg_precision`` the share of the tokens entering each block that are foreground patches: together
they say how well a selector finds the objects, against the ``oracle`` control's ground-truth mask.

``recovery`` is the scene-cut study (``evaluation.scene_cuts``): each frame's IoI by frames since a
scene cut, since the video's start, and since the video's start after ``lead_in_frames`` white frames
(a short extra pass of the backbone over each video's first frames, with its own selector noise).
"""

from __future__ import annotations

import itertools
import logging
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from prunebench.config import EvalConfig
from prunebench.data.pipeline import (
    content_size,
    cycled_frames,
    patch_cover,
    prepare_image,
    prepare_masks,
    video_frames,
)
from prunebench.data.ytvis import Video, YTVISDataset
from prunebench.evaluation.accounting import TokenAccountant
from prunebench.evaluation.flops import backbone_cost
from prunebench.evaluation.plots import KeepExample
from prunebench.evaluation.scene_cuts import AFTER, RecoveryMeter, frame_ioi, instance_recall
from prunebench.evaluation.vis_metrics import VIDEO_AREA_RANGES, score_results
from prunebench.models.tracker import QueryTracker
from prunebench.models.vis_model import VISModel
from prunebench.models.vit import PATCH_SIZE, create_backbone
from prunebench.precision import Precision, autocast
from prunebench.progress import Progress

log = logging.getLogger(__name__)


class IoIMeter:
    """Accumulates IoI per instance, then averages overall, per size bucket and per block."""

    def __init__(self) -> None:
        self._per_instance: dict[tuple[int, int], list[np.ndarray]] = defaultdict(list)
        self._area: dict[tuple[int, int], float] = {}

    def update(self, key: tuple[int, int], patches: torch.Tensor, block_keep: torch.Tensor, area: float) -> None:
        """One instance in one frame: ``patches`` (N,) bool, ``block_keep`` (depth, N)."""
        if not bool(patches.any()):
            return
        self._per_instance[key].append(instance_recall(patches, block_keep))
        self._area[key] = area

    def result(self) -> dict[str, Any]:
        """IoI in percent, overall and per S/M/L, and per block (``per_block``: the mean over instances)."""
        buckets: dict[str, list[float]] = {"all": [], "S": [], "M": [], "L": []}
        blocks = []
        for key, values in self._per_instance.items():
            per_block = np.mean(values, axis=0) * 100.0
            blocks.append(per_block)
            buckets["all"].append(float(per_block.mean()))
            for name, (low, high) in zip(("S", "M", "L"), VIDEO_AREA_RANGES[1:]):
                if low <= self._area[key] < high:
                    buckets[name].append(float(per_block.mean()))
        result: dict[str, Any] = {k: (float(np.mean(v)) if v else None) for k, v in buckets.items()}
        result["per_block"] = np.mean(blocks, axis=0).tolist() if blocks else None
        return result


class ForegroundMeter:
    """Per block, the share of the tokens entering it that are ground-truth foreground (percent)."""

    def __init__(self) -> None:
        self._foreground: torch.Tensor | None = None
        self._kept: torch.Tensor | None = None

    def update(self, foreground: torch.Tensor, block_keep: torch.Tensor) -> None:
        """One frame: ``foreground`` (N,) bool, ``block_keep`` (depth, N)."""
        kept_fg, kept = block_keep[:, foreground].double().sum(1), block_keep.double().sum(1)
        self._foreground = kept_fg if self._foreground is None else self._foreground + kept_fg
        self._kept = kept if self._kept is None else self._kept + kept

    def result(self) -> list[float] | None:
        """Foreground precision of the kept tokens per block; None without frames."""
        if self._kept is None:
            return None
        return (100.0 * self._foreground / self._kept.clamp(min=1)).tolist()


class _Timer:
    """Milliseconds of a call: perf_counter on CPU, CUDA events on a GPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn: Callable[[], Any]) -> tuple[float, Any]:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            result = fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end), result
        begin = time.perf_counter()
        result = fn()
        return (time.perf_counter() - begin) * 1e3, result


def measure_fps(model: VISModel, dataset: YTVISDataset, config: EvalConfig, max_size: int | None,
            device: torch.device, precision: Precision = "fp32") -> dict[str, float]:
    """Backbone and whole-model latency / FPS per frame: batch 1, warm-up, median over the timed frames;
    the model runs under ``precision`` (the tracker step in fp32)."""
    torch.set_num_threads(config.threads)
    model.eval()
    with torch.inference_mode():
        return _measure_fps(model, dataset, config, max_size, device, precision)


def _measure_fps(model: VISModel, dataset: YTVISDataset, config: EvalConfig, max_size: int | None,
                 device: torch.device, precision: Precision) -> dict[str, float]:
    timer, generator = _Timer(device), torch.Generator(device=device).manual_seed(config.seed)
    needed = config.warmup_frames + config.timing_frames
    backbone_ms, model_ms = [], []
    tracker = QueryTracker(config.top_k, config.nms_iou)
    state = None
    for first, image in itertools.islice(cycled_frames(dataset.videos, max_size), needed):
        if first:
            state = None
            tracker.reset()
        image = image.to(device)
        # the oracle's cost does not depend on which patches are foreground: time it with an empty mask
        foreground = image.new_zeros(1, image.shape[-2] * image.shape[-1] // PATCH_SIZE**2, dtype=torch.bool) \
            if model.backbone.method.needs_foreground else None

        def backbone() -> Any:
            with autocast(precision, device):
                return model.backbone(image, state=state, generator=generator, foreground=foreground)

        ms, _ = timer(backbone)
        backbone_ms.append(ms)

        def whole() -> Any:
            with autocast(precision, device):
                frame = model(image, state=state, generator=generator, foreground=foreground)
            tracker.step(frame.class_logits[0], frame.mask_logits[0], frame.query_embeddings[0])
            return frame

        ms, frame = timer(whole)
        model_ms.append(ms)
        state = frame.backbone.state
    skip = config.warmup_frames
    b, m = statistics.median(backbone_ms[skip:]), statistics.median(model_ms[skip:])
    return {"latency_backbone_ms": b, "latency_model_ms": m, "fps_backbone": 1e3 / b, "fps_model": 1e3 / m,
            "timed_frames": len(model_ms) - skip, "timing_threads": config.threads}


def _input_size(image: torch.Tensor) -> tuple[int, int]:
    """``(height, width)`` of an image batch: the key of ``CountedBackbone``'s per-size counts."""
    return int(image.shape[-2]), int(image.shape[-1])


class CountedBackbone:
    """A backbone call that also returns the pass's GMACs, counted on the executed graph (``backbone_cost``).

    A method whose kept counts depend on the image (``image_dependent``: VPP, SViT) is counted on every
    frame. Every other method executes the same graph for every frame of one input size, so its first
    frame of each size is counted and the later ones run uncounted with that count (a counted pass of a
    112-token frame takes 2-3.3x the plain one on the CPU: ``benchmarks/eval_counting.py``): the same numbers,
    outputs and random draws. ``per_size`` holds the last count of each input size.
    """

    def __init__(self, backbone: torch.nn.Module):
        self.backbone = backbone
        self.per_size: dict[tuple[int, int], float] = {}

    def __call__(self, image: torch.Tensor, **forward_kwargs: Any) -> tuple[Any, float]:
        """The backbone's output on ``image`` and the pass's GMACs."""
        size = _input_size(image)
        if self.backbone.method.image_dependent or size not in self.per_size:
            cost = backbone_cost(self.backbone, image, **forward_kwargs)
            self.per_size[size] = cost.gmacs
            return cost.output, cost.gmacs
        return self.backbone(image, **forward_kwargs), self.per_size[size]

    def size_gmacs(self, image: torch.Tensor) -> float:
        """GMACs of a pass at ``image``'s size, counted on the first image of the size and not run again (for a
        reference that only needs its cost, such as the dense backbone beside a pruned one)."""
        size = _input_size(image)
        if size not in self.per_size:
            self.per_size[size] = backbone_cost(self.backbone, image).gmacs
        return self.per_size[size]


@dataclass
class Evaluation:
    """What ``evaluate`` returns: metrics, official results, and keep masks of the first frames."""

    metrics: dict[str, Any]
    results: list[dict[str, Any]]
    examples: list[KeepExample]


def evaluate(model: VISModel, dataset: YTVISDataset, config: EvalConfig, max_size: int | None = None,
             device: str | torch.device = "cpu", timing: bool = True, examples: int = 4,
             precision: Precision = "fp32") -> Evaluation:
    """Score ``model`` on ``dataset`` (the keep masks of the first ``examples`` frames are kept), the model run
    under ``precision`` and its outputs scored in fp32."""
    device = torch.device(device)
    torch.set_num_threads(config.threads)
    model.eval()
    category_ids = sorted(dataset.categories)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    lead_in_generator = torch.Generator(device=device).manual_seed(config.seed)  # the main pass's draws stay its own
    tracker, accountant, ioi = QueryTracker(config.top_k, config.nms_iou), TokenAccountant(), IoIMeter()
    foreground_share, recovery = ForegroundMeter(), RecoveryMeter()
    dense = CountedBackbone(create_backbone(model.backbone.backbone_name, "dense",
                                            adapter=model.backbone.adapter_name).to(device).eval())
    counted = CountedBackbone(model.backbone)
    results, gmacs, dense_gmacs, kept_examples = [], [], [], []
    needs_foreground = model.backbone.method.needs_foreground
    frames = Progress("eval", sum(len(video) for video in dataset.videos), "frames", logger=log)
    with torch.inference_mode(), frames:
        for video in dataset.videos:
            state, areas, first_frames = None, _mean_areas(video), []
            for t, image in enumerate(video_frames(video, max_size)):
                image = image.to(device)
                patches = _instance_patches(video, t, max_size)
                if t <= AFTER:
                    first_frames.append((image, patches))
                foreground = patches.any(dim=0)[None].to(device) if needs_foreground else None
                with autocast(precision, device):
                    backbone_out, frame_gmacs = counted(image, state=state, generator=generator, foreground=foreground)
                    frame = model.decode(image, backbone_out)
                state = backbone_out.state
                tracker.step(frame.class_logits[0], frame.mask_logits[0], frame.query_embeddings[0])
                accountant.update(backbone_out.block_keep)
                gmacs.append(frame_gmacs)
                dense_gmacs.append(dense.size_gmacs(image))
                keep = backbone_out.block_keep[:, 0].float().cpu()
                _update_ioi(ioi, video, t, patches, keep, areas)
                foreground_share.update(patches.any(dim=0), keep)
                recovery.add_video_frame(video.scene_cuts, t, frame_ioi(patches, keep))
                if len(kept_examples) < examples:
                    kept_examples.append(_example(video, t, keep, image.shape[-2:], max_size))
                frames.update()
            results += tracker.finish(video.id, content_size(video.height, video.width, max_size),
                                      (video.height, video.width), category_ids)
            if config.lead_in_frames:
                with autocast(precision, device):
                    _blank_lead_in(model, video, first_frames, config.lead_in_frames, max_size, lead_in_generator,
                                   recovery)
        gt = dataset.ground_truth()
        metrics: dict[str, Any] = score_results(gt, results, per_video=True)
        metrics.update({
            "pkr": accountant.pkr,
            "per_block_keep": accountant.per_block_keep,
            "ioi": ioi.result(),
            "fg_precision": foreground_share.result(),
            "recovery": recovery.result(),
            "gmacs": float(np.mean(gmacs)),
            "gmacs_dense": float(np.mean(dense_gmacs)),
            "frames": accountant.frames,
            "seed": config.seed,
            "threads": config.threads,
            "precision": precision,
            "unit_gmacs": "backbone GMACs per frame (multiply-accumulates; GFLOPs = 2 x GMACs)",
        })
        if timing:
            metrics.update(measure_fps(model, dataset, config, max_size, device, precision))
    return Evaluation(metrics, results, kept_examples)


def _example(video: Video, t: int, block_keep: torch.Tensor, size: torch.Size, max_size: int | None) -> KeepExample:
    """Frame t resized and padded like the model input, with its ``(depth, h, w)`` keep masks."""
    h, w = int(size[0]), int(size[1])
    image = video.load_frame(t)
    ch, cw = content_size(*image.shape[:2], max_size)
    resized = np.asarray(Image.fromarray(image).resize((cw, ch)))
    canvas = np.zeros((h, w, 3), dtype=np.uint8)
    canvas[:ch, :cw] = resized
    return KeepExample(canvas, block_keep.reshape(block_keep.shape[0], h // PATCH_SIZE, w // PATCH_SIZE).numpy())


def _mean_areas(video: Video) -> dict[int, float]:
    """Each instance's mean non-empty area at the video's resolution."""
    out = {}
    for inst in video.instances:
        areas = [float(mask_utils.area({"size": r["size"], "counts": r["counts"].encode()})) for r in inst.rles if r is not None]
        out[inst.id] = float(np.mean(areas)) if areas else 0.0
    return out


def _instance_patches(video: Video, t: int, max_size: int | None) -> torch.Tensor:
    """``(n, N)`` patches of the frame's non-crowd instances (the IoI / oracle patch rule), at model input size."""
    masks, _ = video.masks(t)
    return patch_cover(prepare_masks(masks, max_size), PATCH_SIZE)


def _update_ioi(meter: IoIMeter, video: Video, t: int, patches: torch.Tensor, block_keep: torch.Tensor,
                areas: dict[int, float]) -> None:
    present = [inst for inst in video.instances if inst.rles[t] is not None and not inst.iscrowd]
    for inst, covered in zip(present, patches):  # video.masks lists the same instances, in the same order
        meter.update((video.id, inst.id), covered, block_keep, areas[inst.id])


def _blank_lead_in(model: VISModel, video: Video, first_frames: list[tuple[torch.Tensor, torch.Tensor]], lead_in: int,
                   max_size: int | None, generator: torch.Generator, meter: RecoveryMeter) -> None:
    """The paper's scene-switch protocol: ``lead_in`` white frames of the video's size (temporal state carried),
    then its ``first_frames`` (model input and instance patches, as the main pass prepared them); each one's IoI
    measured by frames since the video began (backbone only)."""
    device = first_frames[0][0].device
    white = prepare_image(np.full((video.height, video.width, 3), 255, dtype=np.uint8), max_size)[None].to(device)
    nothing = torch.zeros(1, white.shape[-2] // PATCH_SIZE * (white.shape[-1] // PATCH_SIZE), dtype=torch.bool,
                          device=device)
    needs_foreground = model.backbone.method.needs_foreground
    state = None
    for _ in range(lead_in):
        state = model.backbone(white, state=state, generator=generator,
                               foreground=nothing if needs_foreground else None).state
    for t, (image, patches) in enumerate(first_frames):
        foreground = patches.any(dim=0)[None].to(device) if needs_foreground else None
        out = model.backbone(image, state=state, generator=generator, foreground=foreground)
        state = out.state
        meter.add("blank", t, frame_ioi(patches, out.block_keep[:, 0].float().cpu()))
