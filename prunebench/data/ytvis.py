"""YouTube-VIS 2019/2021 reader: annotation JSON + JPEG frames, validated before anything runs.

Layout: ``ROOT/annotations/instances_<split>.json`` and ``ROOT/<split>/JPEGImages/<file_name>``.
An annotation file may name another split's frame folder in a top-level ``"frames_split"`` (a
split held out of ``train`` by ``prunebench data split`` reads ``ROOT/train/JPEGImages/``); other
YouTube-VIS tools ignore the key.
Segmentations may be RLE (compressed string or uncompressed count list), polygons, or null
(absent in that frame). Every malformed input stops with one line naming the file and the item
(``ConfigError``): unreadable JSON, missing keys, a missing frame file, a segmentation list whose
length is not the video's length, an undecodable RLE or polygon, an unknown category id.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from prunebench.errors import ConfigError


@dataclass(frozen=True)
class Instance:
    """One annotated object track of a video (per-frame RLEs, None where absent)."""

    id: int
    category_id: int
    iscrowd: bool
    rles: tuple[dict[str, Any] | None, ...]


@dataclass(frozen=True)
class Video:
    """One video: frame files in order and its instances."""

    id: int
    height: int
    width: int
    frame_paths: tuple[Path, ...]
    instances: tuple[Instance, ...]

    def __len__(self) -> int:
        return len(self.frame_paths)

    def load_frame(self, index: int) -> np.ndarray:
        """RGB uint8 ``(H, W, 3)`` of frame ``index``."""
        with Image.open(self.frame_paths[index]) as image:
            return np.asarray(image.convert("RGB"))

    def masks(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Boolean masks ``(n, H, W)`` and category ids ``(n,)`` of the non-crowd instances present."""
        masks, labels = [], []
        for inst in self.instances:
            rle = inst.rles[index]
            if rle is None or inst.iscrowd:
                continue
            masks.append(mask_utils.decode(rle).astype(bool))
            labels.append(inst.category_id)
        if not masks:
            return np.zeros((0, self.height, self.width), dtype=bool), np.zeros((0,), dtype=np.int64)
        return np.stack(masks), np.asarray(labels, dtype=np.int64)


def _to_rle(segmentation: Any, height: int, width: int) -> dict[str, Any]:
    """Compressed RLE (counts as str) of an RLE dict or a polygon list; ValueError if malformed."""
    if isinstance(segmentation, dict):
        if "counts" not in segmentation or "size" not in segmentation:
            raise ValueError("RLE needs 'counts' and 'size'")
        if list(segmentation["size"]) != [height, width]:
            raise ValueError(f"RLE size {segmentation['size']} is not the video's [{height}, {width}]")
        counts = segmentation["counts"]
        if isinstance(counts, list):
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:
            rle = {"size": [height, width], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
        area = mask_utils.area(rle)  # decodes the counts: raises on a corrupt string
        if area > height * width:
            raise ValueError("RLE covers more pixels than the frame")
        counts = rle["counts"]
        return {"size": [height, width], "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}
    if isinstance(segmentation, list) and segmentation and all(isinstance(p, list) and len(p) >= 6 for p in segmentation):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
        return {"size": [height, width], "counts": rle["counts"].decode("ascii")}
    raise ValueError("neither an RLE dict nor a list of polygons")


def _rle_is_valid(rle: dict[str, Any]) -> bool:
    try:
        decoded = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")})
    except Exception:  # pycocotools raises bare exceptions on corrupt counts
        return False
    return decoded.shape[:2] == tuple(rle["size"])


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: annotation file not found") from None
    except (OSError, ValueError) as error:
        raise ConfigError(f"{path}: not readable JSON ({error})") from None
    for key in ("videos", "annotations", "categories"):
        if not isinstance(data.get(key) if isinstance(data, dict) else None, list):
            raise ConfigError(f"{path}: missing list '{key}'")
    return data


class Annotations:
    """A validated YouTube-VIS annotation file (no frames needed): videos, instances, categories."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        data = _read_json(self.path)
        self.categories = {int(c["id"]): str(c.get("name", c["id"])) for c in data["categories"]}
        self.videos: dict[int, dict[str, Any]] = {}
        self.instances: dict[int, list[Instance]] = {}
        for video in data["videos"]:
            try:
                vid = int(video["id"])
                self.videos[vid] = {"height": int(video["height"]), "width": int(video["width"]),
                                    "file_names": list(video["file_names"])}
            except (KeyError, TypeError, ValueError):
                ident = video.get("id", "?") if isinstance(video, dict) else "?"
                raise self.fail(f"video {ident}", "needs id, height, width and file_names") from None
            self.instances[vid] = []
        for ann in data["annotations"]:
            self._add(ann)
        self.frames_split = self._frames_split(data.get("frames_split"))
        self.sha256 = hashlib.sha256(self.path.read_bytes()).hexdigest()

    def _frames_split(self, value: Any) -> str | None:
        """The optional ``frames_split``: the name of a split folder under ROOT, or None."""
        if value is not None and (not isinstance(value, str) or value in ("", ".", "..") or Path(value).name != value):
            raise self.fail("frames_split", f"{value!r} is not a split folder name; allowed: a name like 'train'")
        return value

    def fail(self, item: str, problem: str) -> ConfigError:
        """The one-line error for a bad item of this file."""
        return ConfigError(f"{self.path}: {item}: {problem}")

    def _add(self, ann: dict[str, Any]) -> None:
        ann_id, vid = ann.get("id", "?"), ann.get("video_id")
        if vid not in self.videos:
            raise self.fail(f"annotation {ann_id}", f"unknown video_id {vid!r}")
        if ann.get("category_id") not in self.categories:
            raise self.fail(f"annotation {ann_id} (video {vid})",
                            f"unknown category_id {ann.get('category_id')!r}; allowed: {sorted(self.categories)}")
        segs = ann.get("segmentations")
        meta = self.videos[vid]
        length = len(meta["file_names"])
        if not isinstance(segs, list) or len(segs) != length:
            n = len(segs) if isinstance(segs, list) else "no"
            raise self.fail(f"annotation {ann_id} (video {vid})", f"has {n} segmentations for a video of {length} frames")
        rles: list[dict[str, Any] | None] = []
        for index, seg in enumerate(segs):
            if seg is None:
                rles.append(None)
                continue
            try:
                rle = _to_rle(seg, meta["height"], meta["width"])
            except Exception as error:  # pycocotools raises bare exceptions on corrupt input
                raise self.fail(f"annotation {ann_id} (video {vid}) frame {index}", f"undecodable segmentation ({error})") from None
            if not _rle_is_valid(rle):
                raise self.fail(f"annotation {ann_id} (video {vid}) frame {index}", "undecodable RLE")
            rles.append(rle)
        self.instances[vid].append(Instance(int(ann_id), int(ann["category_id"]), bool(ann.get("iscrowd", 0)), tuple(rles)))

    def ground_truth(self) -> dict[str, Any]:
        """The annotations with every segmentation as compressed RLE (what the evaluator reads)."""
        annotations = []
        for vid, instances in self.instances.items():
            for inst in instances:
                annotations.append({"id": inst.id, "video_id": vid, "category_id": inst.category_id,
                                    "iscrowd": int(inst.iscrowd), "segmentations": list(inst.rles)})
        videos = [{"id": v, "height": m["height"], "width": m["width"], "length": len(m["file_names"])}
                  for v, m in self.videos.items()]
        return {"videos": videos, "annotations": annotations,
                "categories": [{"id": k, "name": n} for k, n in self.categories.items()]}


class YTVISDataset:
    """A validated YouTube-VIS split with its frames. ``videos`` in file order."""

    def __init__(self, root: str | Path, split: str):
        self.root = Path(root)
        self.split = split
        self.annotations = Annotations(self.root / "annotations" / f"instances_{split}.json")
        self.categories = self.annotations.categories
        self.sha256 = self.annotations.sha256
        self.frames_dir = self.root / (self.annotations.frames_split or split) / "JPEGImages"
        self.videos = []
        for vid, meta in self.annotations.videos.items():
            paths = tuple(self.frames_dir / name for name in meta["file_names"])
            for index, path in enumerate(paths):
                if not path.is_file():
                    raise self.annotations.fail(f"video {vid} frame {index}", f"file {path} is missing")
            self.videos.append(Video(vid, meta["height"], meta["width"], paths, tuple(self.annotations.instances[vid])))

    def ground_truth(self) -> dict[str, Any]:
        """See ``Annotations.ground_truth``."""
        return self.annotations.ground_truth()
