"""Synthetic videos in the exact YouTube-VIS layout (``prunebench data synth OUT``).

Nothing can be downloaded here, so the real readers and the whole pipeline are exercised on videos
this module draws. They are not trivial: a textured background that pans slowly; 1–4 objects per
video (by default) from 5 categories that differ in shape *and* texture (disk/solid, square/stripes,
triangle/checker, ring/speckle, cross/dots) and, by default, in hue (each category has its own colour range,
jittered per instance); smooth motion with rotation and breathing scale; occlusion by depth order;
objects that enter (sliding in from outside the frame within ``ENTRY_FRAMES`` frames) or leave
mid-video; optional scene cuts (new background, objects jump; identities continue, as in the paper's §5.4),
recorded in each video entry as ``scene_cuts`` (the first frame of each new scene; ``[]`` without one).

Harder data for benchmarking (``SynthSpec`` options; the defaults keep the frames byte-identical to
those drawn before the options existed, because nothing extra is drawn at a default):
``hue_mode="shared"`` removes the colour shortcut (every category draws its hue from the whole
circle, so only shape and texture tell the class); ``radius_range`` sets object sizes (e.g.
(0.06, 0.30): from about one 16-pixel patch across to large); ``max_objects`` raises the objects per
video; ``camera_motion`` adds a camera whose smoothly wandering drift (pixels per frame) moves the
whole scene, background and objects alike.

Layout written (both splits carry ground truth):

    OUT/train/JPEGImages/<video>/<frame>.jpg    OUT/annotations/instances_train.json
    OUT/valid/JPEGImages/<video>/<frame>.jpg    OUT/annotations/instances_valid.json
    OUT/splits.json                              per split: videos, frames, instances, sha256

The same arguments give byte-identical files. The output appears atomically: everything is
written to a temporary folder beside OUT, which is then renamed.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import math
import multiprocessing
import os
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from pydantic import Field, field_validator

from prunebench.atomic import check_folder_target, staged_folder
from prunebench.errors import ConfigError
from prunebench.validation import ConfigModel, Pair
from prunebench.progress import Progress

log = logging.getLogger(__name__)

CATEGORIES = [
    {"id": 1, "name": "disk", "supercategory": "shape"},
    {"id": 2, "name": "square", "supercategory": "shape"},
    {"id": 3, "name": "triangle", "supercategory": "shape"},
    {"id": 4, "name": "ring", "supercategory": "shape"},
    {"id": 5, "name": "cross", "supercategory": "shape"},
]
JPEG_QUALITY = 92
MIN_VISIBLE_PIXELS = 4
#: the fastest camera allowed (pixels per frame): one ViT patch
MAX_CAMERA_MOTION = 16.0
HueMode = Literal["category", "shared"]
#: the options that make the data harder (see SynthSpec)
HARDNESS_OPTIONS = ("hue_mode", "radius_range", "max_objects", "camera_motion")


class SynthSpec(ConfigModel):
    """What to generate. ``videos`` is the train split size; valid gets ``valid_videos``.

    The last four fields make the data harder; at their defaults nothing is drawn for them, so the
    files are the same as before they existed. ``hue_mode``: "category" (each category its own hue
    range) or "shared" (every category draws from the full hue circle: the class is told by shape
    and texture only). ``radius_range``: object radius as a fraction of the short side.
    ``max_objects``: objects per video are drawn from 1..max_objects. ``camera_motion``: mean speed
    (pixels per frame) of a camera that moves the whole scene, background and objects alike.
    Validated on construction (one line per problem through ``prunebench.validation``).
    """

    videos: int = Field(24, ge=1)
    valid_videos: int = Field(8, ge=1)
    frames: int = Field(12, ge=1)
    height: int = Field(128, ge=32)
    width: int = Field(224, ge=32)
    seed: int = 0
    scene_cut_prob: float = Field(0.15, ge=0, le=1)
    hue_mode: HueMode = "category"
    radius_range: Pair[float] = (0.15, 0.28)
    max_objects: int = Field(4, ge=1)
    camera_motion: float = Field(0.0, ge=0, le=MAX_CAMERA_MOTION)

    @field_validator("radius_range")
    @classmethod
    def _ordered_radii(cls, radii: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 < radii[0] <= radii[1] <= 0.5:
            raise ValueError("LOW HIGH with 0 < LOW <= HIGH <= 0.5")
        return radii

    def record(self) -> dict[str, Any]:
        """The fields written to splits.json; the hardness options only where they differ from their
        defaults, so a default spec writes the same file as before those options existed."""
        defaults = SynthSpec()
        return {name: value for name, value in self.__dict__.items()
                if name not in HARDNESS_OPTIONS or value != getattr(defaults, name)}


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A low-contrast textured field (sum of oriented waves + grain), float RGB in [0, 255]."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(70, 170, size=3).astype(np.float32)
    image = np.broadcast_to(base, (height, width, 3)).copy()
    for _ in range(4):
        angle, freq = rng.uniform(0, math.pi), rng.uniform(0.02, 0.12)
        phase, amp = rng.uniform(0, 2 * math.pi), rng.uniform(8, 22)
        wave = np.sin(freq * (xx * math.cos(angle) + yy * math.sin(angle)) + phase)
        image += amp * wave[..., None] * rng.uniform(-1, 1, size=3).astype(np.float32)
    image += rng.normal(0, 6, size=(height, width, 1)).astype(np.float32)
    return image


def _shape_mask(category: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Mask of a category's shape in its local coordinates (radius 1)."""
    r = np.hypot(u, v)
    if category == 1:
        return r <= 1.0
    if category == 2:
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8
    if category == 3:
        return (v <= 0.5) & (v >= 2.0 * np.abs(u) * math.sqrt(3) / 2 - 1.0) & (np.abs(u) <= 1.0)
    if category == 4:
        return (r <= 1.0) & (r >= 0.55)
    return ((np.abs(u) <= 0.33) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= 0.33) & (np.abs(u) <= 1.0))


def _texture(category: int, u: np.ndarray, v: np.ndarray, c1: np.ndarray, c2: np.ndarray,
             rng: np.random.Generator) -> np.ndarray:
    """Per-pixel colour of a category's texture."""
    if category == 1:
        pick = np.zeros_like(u, dtype=bool)
    elif category == 2:
        pick = np.sin(u * 9.0) > 0
    elif category == 3:
        pick = (np.floor(u * 3.5) + np.floor(v * 3.5)) % 2 == 0
    elif category == 4:
        pick = rng.random(u.shape) < 0.25
    else:
        pick = (np.abs(((u * 4) % 1.0) - 0.5) < 0.22) & (np.abs(((v * 4) % 1.0) - 0.5) < 0.22)
    return np.where(pick[..., None], c2, c1)


#: frames an entering object takes to slide in from outside the frame
ENTRY_FRAMES = 3


@dataclass
class _Object:
    category: int
    radius: float
    position: np.ndarray  # centre at t = 0 of the drift ``position + velocity * t``
    velocity: np.ndarray
    angle: float
    spin: float
    wobble: float
    colors: tuple[np.ndarray, np.ndarray]
    depth: float
    start: int
    stop: int
    entry_offset: np.ndarray | None = None  # an entering object starts this far behind its drift

    def center(self, t: int) -> np.ndarray:
        """Centre at frame t: the drift, minus the entry offset fading out over ``ENTRY_FRAMES``."""
        center = self.position + self.velocity * t
        if self.entry_offset is not None:
            center = center - self.entry_offset * max(0.0, 1.0 - (t - self.start) / ENTRY_FRAMES)
        return center


#: base hue (degrees) of each category; instances jitter around it
CATEGORY_HUES = {1: 0.0, 2: 120.0, 3: 220.0, 4: 55.0, 5: 290.0}


def _hsv(hue: float, saturation: float, value: float) -> np.ndarray:
    h = (hue % 360.0) / 60.0
    c = value * saturation
    x = c * (1 - abs(h % 2 - 1))
    rgb = [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)][int(h) % 6]
    return (np.array(rgb) + (value - c)) * 255.0


def _colors(rng: np.random.Generator, category: int, hue_mode: HueMode) -> tuple[np.ndarray, np.ndarray]:
    """A saturated main colour (near the category's hue, or any hue when shared), and a contrasting texture colour."""
    hue = CATEGORY_HUES[category] + rng.uniform(-18, 18) if hue_mode == "category" else rng.uniform(0, 360)
    main = _hsv(hue, rng.uniform(0.7, 1.0), rng.uniform(0.75, 1.0))
    accent = _hsv(hue + rng.uniform(150, 210), rng.uniform(0.5, 1.0), rng.uniform(0.3, 0.9))
    return main.astype(np.float32), accent.astype(np.float32)


def _objects(rng: np.random.Generator, spec: SynthSpec, camera: np.ndarray) -> list[_Object]:
    """The video's objects, placed in the view of frame 0 (an entering one in the view of its first frame)."""
    count = int(rng.integers(1, spec.max_objects + 1))
    short = min(spec.height, spec.width)
    objects = []
    for _ in range(count):
        radius = float(rng.uniform(*spec.radius_range) * short)
        start, stop = 0, spec.frames
        position = np.array([rng.uniform(radius, spec.width - radius), rng.uniform(radius, spec.height - radius)])
        speed = rng.uniform(0.4, 1.6) * short / 64
        direction = rng.uniform(0, 2 * math.pi)
        velocity = speed * np.array([math.cos(direction), math.sin(direction)])
        entry_offset = None
        if spec.frames >= 6 and rng.random() < 0.3:  # enters mid-video: slides in from outside the frame
            start = int(rng.integers(1, spec.frames // 2))
            side = rng.integers(4)
            outside = [np.array([-radius, position[1]]), np.array([spec.width + radius, position[1]]),
                       np.array([position[0], -radius]), np.array([position[0], spec.height + radius])][side]
            # fully in at start + ENTRY_FRAMES (at ``position``), then drifting like the others
            entry_offset = position - velocity * ENTRY_FRAMES - outside
            position = position - velocity * (start + ENTRY_FRAMES) + camera[start]
        elif spec.frames >= 6 and rng.random() < 0.2:  # leaves (is removed) mid-video
            stop = int(rng.integers(spec.frames // 2, spec.frames))
        category = int(rng.integers(1, len(CATEGORIES) + 1))
        objects.append(_Object(
            category=category, radius=radius, position=position,
            velocity=velocity, angle=float(rng.uniform(0, 2 * math.pi)), spin=float(rng.uniform(-0.08, 0.08)),
            wobble=float(rng.uniform(0, 2 * math.pi)), colors=_colors(rng, category, spec.hue_mode),
            depth=float(rng.random()), start=start, stop=stop, entry_offset=entry_offset,
        ))
    return objects


def _camera_path(rng: np.random.Generator, spec: SynthSpec) -> np.ndarray:
    """Camera position per frame in whole pixels (frames x 2, x then y; 0 at frame 0): a drift at
    ``camera_motion`` x U(0.5, 1.5) pixels per frame whose heading wanders smoothly. Draws nothing
    when ``camera_motion`` is 0."""
    if spec.camera_motion == 0.0:
        return np.zeros((spec.frames, 2))
    heading = rng.uniform(0, 2 * math.pi) + np.cumsum(rng.normal(0, 0.3, size=spec.frames - 1))
    steps = spec.camera_motion * rng.uniform(0.5, 1.5) * np.stack([np.cos(heading), np.sin(heading)], axis=1)
    return np.round(np.concatenate([np.zeros((1, 2)), np.cumsum(steps, axis=0)]))


def _render_video(rng: np.random.Generator, spec: SynthSpec) -> tuple[list[np.ndarray], list[_Object],
                                                                     list[list[np.ndarray | None]], list[int]]:
    """Frames (uint8 HxWx3) and, per object, its visible mask per frame (None when absent).

    Objects live in scene coordinates; the camera moves the whole view over the scene (the
    background's own slow pan comes on top, as a far layer would move).
    """
    camera = _camera_path(rng, spec)
    reach = int(np.abs(camera).max())  # margin the camera may look into on each side
    pan = int(spec.frames * 2 + 8)
    background = _background(rng, spec.height + pan + 2 * reach, spec.width + pan + 2 * reach)
    pan_velocity = rng.uniform(-1.5, 1.5, size=2)
    origin = np.array([pan / 2, pan / 2])
    objects = _objects(rng, spec, camera)
    cut = int(rng.integers(2, spec.frames)) if spec.frames >= 4 and rng.random() < spec.scene_cut_prob else -1
    yy, xx = np.mgrid[0:spec.height, 0:spec.width].astype(np.float32)
    frames, masks = [], [[None] * spec.frames for _ in objects]
    order = sorted(range(len(objects)), key=lambda i: objects[i].depth)
    for t in range(spec.frames):
        if t == cut:  # scene cut: new background, objects jump
            background = _background(rng, spec.height + pan + 2 * reach, spec.width + pan + 2 * reach)
            for obj in objects:
                obj.position = np.array([rng.uniform(obj.radius, spec.width - obj.radius),
                                         rng.uniform(obj.radius, spec.height - obj.radius)]) - obj.velocity * t + camera[t]
                obj.entry_offset = None
        offset = np.clip(origin + pan_velocity * t, 0, pan - 1).astype(int) + reach + camera[t].astype(int)
        image = background[offset[1]:offset[1] + spec.height, offset[0]:offset[0] + spec.width].copy()
        drawn: list[tuple[int, np.ndarray]] = []
        for i in order:
            obj = objects[i]
            if not obj.start <= t < obj.stop:
                continue
            center = obj.center(t) - camera[t]
            radius = obj.radius * (1.0 + 0.08 * math.sin(0.5 * t + obj.wobble))
            angle = obj.angle + obj.spin * t
            dx, dy = (xx - center[0]) / radius, (yy - center[1]) / radius
            u = dx * math.cos(angle) + dy * math.sin(angle)
            v = -dx * math.sin(angle) + dy * math.cos(angle)
            shape = _shape_mask(obj.category, u, v)
            if not shape.any():
                continue
            texture = _texture(obj.category, u, v, *obj.colors, rng)
            shade = (1.0 - 0.25 * np.clip(np.hypot(u, v), 0, 1))[..., None]
            image = np.where(shape[..., None], texture * shade, image)
            for k, (_, lower) in enumerate(drawn):  # occlusion: later (nearer) objects cover earlier ones
                drawn[k] = (drawn[k][0], lower & ~shape)
            drawn.append((i, shape))
        for i, visible in drawn:
            if visible.sum() >= MIN_VISIBLE_PIXELS:
                masks[i][t] = visible
        frames.append(np.clip(image + rng.normal(0, 2.0, image.shape), 0, 255).astype(np.uint8))
    return frames, objects, masks, [cut] if cut >= 0 else []


def _encode_rle(mask: np.ndarray) -> dict[str, Any]:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _jpeg_bytes(frame: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def _render_encoded(seed: np.random.SeedSequence, spec: SynthSpec) -> tuple[list[bytes], list[dict[str, Any]], list[int]]:
    """One video from its own seed: JPEG bytes per frame, per visible object its annotation, and its scene cuts."""
    frames, objects, masks, cuts = _render_video(np.random.default_rng(seed), spec)
    annotations = []
    for obj, per_frame in zip(objects, masks):
        if all(m is None for m in per_frame):
            continue
        segmentations = [None if m is None else _encode_rle(m) for m in per_frame]
        annotations.append({
            "category_id": obj.category,
            "iscrowd": 0,
            "height": spec.height,
            "width": spec.width,
            "length": 1,
            "segmentations": segmentations,
            "areas": [None if m is None else int(m.sum()) for m in per_frame],
            "bboxes": [None if m is None else [float(x) for x in mask_utils.toBbox(s)]
                       for m, s in zip(per_frame, segmentations)],
        })
    return [_jpeg_bytes(frame) for frame in frames], annotations, cuts


def _write_split(root: Path, split: str, count: int, spec: SynthSpec, seed: np.random.SeedSequence,
                 pool: Executor | None, progress: Progress) -> dict[str, Any]:
    videos, annotations, digest = [], [], hashlib.sha256()
    frame_total = 0
    render = functools.partial(_render_encoded, spec=spec)
    rendered = pool.map(render, seed.spawn(count), chunksize=8) if pool else map(render, seed.spawn(count))
    for index, (frames, objects, cuts) in enumerate(rendered):  # in order: files and hash do not depend on the pool
        name = f"{split}_{index:04d}"
        folder = root / split / "JPEGImages" / name
        folder.mkdir(parents=True)
        file_names = []
        for t, data in enumerate(frames):
            (folder / f"{t:05d}.jpg").write_bytes(data)
            file_names.append(f"{name}/{t:05d}.jpg")
            digest.update(data)
        frame_total += len(frames)
        progress.update()
        video_id = index + 1
        videos.append({"id": video_id, "width": spec.width, "height": spec.height, "length": spec.frames,
                       "file_names": file_names, "scene_cuts": cuts})
        for annotation in objects:
            annotations.append({"id": len(annotations) + 1, "video_id": video_id, **annotation})
    dataset = {
        "info": {"description": f"prunebench synthetic videos ({split})", "seed": spec.seed},
        "licenses": [],
        "videos": videos,
        "annotations": annotations,
        "categories": CATEGORIES,
    }
    text = json.dumps(dataset, sort_keys=True, separators=(",", ":")).encode()
    (root / "annotations").mkdir(exist_ok=True)
    (root / "annotations" / f"instances_{split}.json").write_bytes(text)
    digest.update(text)
    return {"videos": len(videos), "frames": frame_total, "instances": len(annotations), "sha256": digest.hexdigest()}


def generate(out: str | os.PathLike[str], spec: SynthSpec, overwrite: bool = False,
             workers: int | None = None) -> dict[str, Any]:
    """Write the train and valid splits under ``out`` atomically; return counts and split hashes.

    Videos are drawn by ``workers`` processes (default: one per CPU; 1 = in this process); each
    video has its own seed, so the files are the same whatever the number of workers.
    """
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise ConfigError(f"--workers {workers}: allowed: an integer >= 1")
    target = Path(out)
    check_folder_target(target)
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise ConfigError(f"{target}: folder exists and is not empty; allowed: a new folder, or --overwrite")
    # fork: the workers only draw with numpy/PIL/pycocotools, and forking skips re-importing torch
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) if workers > 1 else None
    progress = Progress("data synth", spec.videos + spec.valid_videos, "videos", logger=log)
    try:
        with staged_folder(target, replace=True) as staging:
            train_seed, valid_seed = np.random.SeedSequence(spec.seed).spawn(2)
            splits = {
                "train": _write_split(staging, "train", spec.videos, spec, train_seed, pool, progress),
                "valid": _write_split(staging, "valid", spec.valid_videos, spec, valid_seed, pool, progress),
            }
            record = {"spec": spec.record(), "splits": splits}
            (staging / "splits.json").write_text(json.dumps(record, indent=2, sort_keys=True))
    finally:
        progress.close()
        if pool is not None:
            pool.shutdown()
    return {
        "out": str(target),
        "videos": sum(s["videos"] for s in splits.values()),
        "frames": sum(s["frames"] for s in splits.values()),
        "instances": sum(s["instances"] for s in splits.values()),
        "splits": splits,
    }
