"""YouTube-VIS 2019/2021 reader: annotation JSON + JPEG frames, validated before anything runs.

Layout: ``ROOT/annotations/instances_<split>.json`` and ``ROOT/<split>/JPEGImages/<file_name>``.
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


class YTVISDataset:
    """A validated YouTube-VIS split. ``videos`` in file order; ``categories`` id → name."""

    def __init__(self, root: str | Path, split: str):
        self.root = Path(root)
        self.split = split
        self.annotation_path = self.root / "annotations" / f"instances_{split}.json"
        data = _read_json(self.annotation_path)
        self.categories = {int(c["id"]): str(c.get("name", c["id"])) for c in data["categories"]}
        self.raw = data
        self.videos = self._load_videos(data)
        self.sha256 = hashlib.sha256(self.annotation_path.read_bytes()).hexdigest()

    def _fail(self, item: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.annotation_path}: {item}: {problem}")

    def _load_videos(self, data: dict[str, Any]) -> list[Video]:
        frames_dir = self.root / self.split / "JPEGImages"
        by_video: dict[int, list[Instance]] = {}
        meta: dict[int, dict[str, Any]] = {}
        for video in data["videos"]:
            try:
                vid, height, width, names = int(video["id"]), int(video["height"]), int(video["width"]), video["file_names"]
            except (KeyError, TypeError, ValueError):
                raise self._fail(f"video {video.get('id', '?') if isinstance(video, dict) else '?'}",
                                 "needs id, height, width and file_names") from None
            for index, name in enumerate(names):
                if not (frames_dir / name).is_file():
                    raise self._fail(f"video {vid} frame {index}", f"file {frames_dir / name} is missing")
            meta[vid] = {"height": height, "width": width, "names": names}
            by_video[vid] = []
        for ann in data["annotations"]:
            ann_id = ann.get("id", "?")
            vid = ann.get("video_id")
            if vid not in meta:
                raise self._fail(f"annotation {ann_id}", f"unknown video_id {vid!r}")
            if ann.get("category_id") not in self.categories:
                raise self._fail(
                    f"annotation {ann_id} (video {vid})",
                    f"unknown category_id {ann.get('category_id')!r}; allowed: {sorted(self.categories)}",
                )
            segs = ann.get("segmentations")
            length = len(meta[vid]["names"])
            if not isinstance(segs, list) or len(segs) != length:
                n = len(segs) if isinstance(segs, list) else "no"
                raise self._fail(f"annotation {ann_id} (video {vid})", f"has {n} segmentations for a video of {length} frames")
            height, width = meta[vid]["height"], meta[vid]["width"]
            rles = []
            for index, seg in enumerate(segs):
                if seg is None:
                    rles.append(None)
                    continue
                try:
                    rle = _to_rle(seg, height, width)
                except Exception as error:  # pycocotools raises bare exceptions on corrupt input
                    raise self._fail(f"annotation {ann_id} (video {vid}) frame {index}", f"undecodable segmentation ({error})") from None
                if not _rle_is_valid(rle):
                    raise self._fail(f"annotation {ann_id} (video {vid}) frame {index}", "undecodable RLE")
                rles.append(rle)
            by_video[vid].append(Instance(int(ann_id), int(ann["category_id"]), bool(ann.get("iscrowd", 0)), tuple(rles)))
        return [
            Video(vid, m["height"], m["width"], tuple(frames_dir / n for n in m["names"]), tuple(by_video[vid]))
            for vid, m in meta.items()
        ]

    def ground_truth(self) -> dict[str, Any]:
        """The annotation dict with every segmentation as compressed RLE (for the evaluator)."""
        annotations = []
        for video in self.videos:
            for inst in video.instances:
                areas = [None if r is None else float(mask_utils.area({"size": r["size"], "counts": r["counts"].encode()}))
                         for r in inst.rles]
                annotations.append({"id": inst.id, "video_id": video.id, "category_id": inst.category_id,
                                    "iscrowd": int(inst.iscrowd), "segmentations": list(inst.rles), "areas": areas})
        videos = [{"id": v.id, "height": v.height, "width": v.width, "length": len(v)} for v in self.videos]
        categories = [{"id": k, "name": n} for k, n in self.categories.items()]
        return {"videos": videos, "annotations": annotations, "categories": categories}
