"""Frames and targets for training and evaluation: resize, pad to 32, normalise, clip sampling.

Training samples are clips in VPP's protocol (docs/methods.md §2.8): a key frame plus ``num_ref``
reference frames drawn uniformly within ±``frame_range`` of it, in random temporal order, with the
key frame last; one random horizontal flip for the whole clip. Evaluation walks each video's frames
in order.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from prunebench.data.ytvis import Video, YTVISDataset

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
SIZE_DIVISOR = 32


def content_size(height: int, width: int, max_size: int | None) -> tuple[int, int]:
    """Size after resizing so that the long side is ``max_size`` (aspect kept; None: unchanged)."""
    if max_size is None:
        return height, width
    scale = max_size / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def padded_size(height: int, width: int) -> tuple[int, int]:
    """Round both sides up to a multiple of 32."""
    return (math.ceil(height / SIZE_DIVISOR) * SIZE_DIVISOR, math.ceil(width / SIZE_DIVISOR) * SIZE_DIVISOR)


def prepare_image(image: np.ndarray, max_size: int | None) -> Tensor:
    """uint8 ``(H, W, 3)`` → normalised float ``(3, Hp, Wp)``, resized and zero-padded (= the mean)."""
    tensor = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1)
    h, w = content_size(tensor.shape[1], tensor.shape[2], max_size)
    if (h, w) != tuple(tensor.shape[1:]):
        tensor = F.interpolate(tensor[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    mean = torch.tensor(PIXEL_MEAN).view(3, 1, 1)
    std = torch.tensor(PIXEL_STD).view(3, 1, 1)
    tensor = (tensor - mean) / std
    ph, pw = padded_size(h, w)
    return F.pad(tensor, (0, pw - w, 0, ph - h))


def prepare_masks(masks: np.ndarray, max_size: int | None) -> Tensor:
    """bool ``(n, H, W)`` → float ``(n, Hp, Wp)`` resized (nearest) and zero-padded like the image."""
    tensor = torch.from_numpy(np.ascontiguousarray(masks)).float()
    h, w = content_size(tensor.shape[1], tensor.shape[2], max_size)
    if (h, w) != tuple(tensor.shape[1:]) and tensor.shape[0]:
        tensor = F.interpolate(tensor[None], size=(h, w), mode="nearest")[0]
    elif tensor.shape[0] == 0:
        tensor = tensor.new_zeros((0, h, w))
    ph, pw = padded_size(h, w)
    return F.pad(tensor, (0, pw - w, 0, ph - h))


def patch_cover(masks: Tensor, patch_size: int = 16) -> Tensor:
    """``(n, H, W)`` float/bool masks → ``(n, N)`` bool: the patches any pixel of each mask touches.

    The masks are resized and padded like the model input (H, W multiples of ``patch_size``);
    patches are numbered row-major, as the backbone's tokens.
    """
    height, width = masks.shape[-2:]
    if height % patch_size or width % patch_size:
        raise ValueError(f"mask size {height}x{width} is not a multiple of the patch size {patch_size}")
    return F.max_pool2d(masks[:, None].float(), patch_size).flatten(1) > 0


def foreground_patches(masks: Tensor) -> Tensor:
    """``(n, H, W)`` instance masks → ``(N,)`` bool: patches covered by any instance."""
    return patch_cover(masks).any(dim=0)


@dataclass
class Clip:
    """Frames ``(T, 3, H, W)`` of one clip and per frame (masks (n, H, W), class indices (n,))."""

    frames: Tensor
    targets: list[tuple[Tensor, Tensor]]


class ClipSampler(Dataset):
    """Training clips: one item per (video, key frame)."""

    def __init__(self, dataset: YTVISDataset, num_ref: int = 1, frame_range: int = 5,
                 max_size: int | None = None, flip: bool = True, seed: int = 0):
        self.dataset = dataset
        self.num_ref, self.frame_range, self.max_size, self.flip = num_ref, frame_range, max_size, flip
        self.class_index = {c: i for i, c in enumerate(sorted(dataset.categories))}
        self.items = [(v, t) for v, video in enumerate(dataset.videos) for t in range(len(video))]
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.items)

    def frame_indices(self, video: Video, key: int, rng: np.random.Generator) -> list[int]:
        """References within ±frame_range (not the key itself where possible), random order, key last."""
        window = [t for t in range(max(0, key - self.frame_range), min(len(video), key + self.frame_range + 1)) if t != key]
        refs = list(rng.choice(window, size=self.num_ref, replace=len(window) < self.num_ref)) if window else [key] * self.num_ref
        return [int(t) for t in refs] + [key]

    def __getitem__(self, index: int) -> Clip:
        rng = np.random.default_rng((self.seed, self.epoch, index))
        video_index, key = self.items[index]
        video = self.dataset.videos[video_index]
        flip = self.flip and rng.random() < 0.5
        frames, targets = [], []
        for t in self.frame_indices(video, key, rng):
            image = video.load_frame(t)
            masks, labels = video.masks(t)
            if flip:
                image, masks = image[:, ::-1], masks[:, :, ::-1]
            frames.append(prepare_image(image, self.max_size))
            classes = torch.tensor([self.class_index[int(c)] for c in labels], dtype=torch.long)
            targets.append((prepare_masks(masks, self.max_size), classes))
        return Clip(torch.stack(frames), targets)


@dataclass
class ClipBatch:
    """Frames ``(B, T, 3, H, W)`` and ``targets[t][b]`` = (masks, class indices)."""

    frames: Tensor
    targets: list[list[tuple[Tensor, Tensor]]]


def collate_clips(clips: list[Clip]) -> ClipBatch:
    """Batch clips: frames ``(B, T, 3, H, W)`` (padded to the largest), targets per frame per sample."""
    h = max(c.frames.shape[-2] for c in clips)
    w = max(c.frames.shape[-1] for c in clips)
    frames = torch.stack([F.pad(c.frames, (0, w - c.frames.shape[-1], 0, h - c.frames.shape[-2])) for c in clips])
    steps = clips[0].frames.shape[0]
    targets = [
        [(F.pad(m, (0, w - m.shape[-1], 0, h - m.shape[-2])), c) for m, c in (clip.targets[t] for clip in clips)]
        for t in range(steps)
    ]
    return ClipBatch(frames, targets)


def video_frames(video: Video, max_size: int | None) -> Iterator[Tensor]:
    """A video's frames in order, each ``(1, 3, Hp, Wp)``."""
    for t in range(len(video)):
        yield prepare_image(video.load_frame(t), max_size)[None]


def cycled_frames(videos: Sequence[Video], max_size: int | None) -> Iterator[tuple[bool, Tensor]]:
    """``(first frame of its video?, frame)`` over the videos in order, starting again at the end
    (for timing as many frames as asked); stop it with ``itertools.islice``."""
    while True:
        for video in videos:
            for t, image in enumerate(video_frames(video, max_size)):
                yield t == 0, image
