"""YouTube-VIS 2019/2021 reader: annotation JSON + JPEG frames, validated before anything runs.

Layout: ``ROOT/annotations/instances_<split>.json`` and ``ROOT/<split>/JPEGImages/<file_name>``.
An annotation file may name another split's frame folder in a top-level ``"frames_split"`` (a
split held out of ``train`` by ``prunebench data split`` reads ``ROOT/train/JPEGImages/``); other
YouTube-VIS tools ignore the key.
Segmentations may be RLE (compressed string or uncompressed count list), polygons, or null
(absent in that frame). Every malformed input stops with one line naming the file and the item
(``ConfigError``): unreadable JSON, missing keys, a video whose ``length`` is not its number of
``file_names``, a missing frame file or one that is not an image of the video's size (read from its header,
no pixel decoded), a segmentation list whose length is not the video's length,
an undecodable RLE or polygon (checked in linear time before pycocotools sees it), an ``areas``
entry that is not a number. Annotations whose category is missing from the category list are
dropped, as ``ytvoseval`` does, with one warning (``Annotations.warnings``). A split without a
frame stops a command that needs it (``YTVISDataset.check_not_empty``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from pycocotools import mask as mask_utils

from prunebench.errors import ConfigError

logger = logging.getLogger(__name__)

#: what one frame's segmentation may be (the "allowed" part of the error messages)
SEGMENTATION_FORMS = ("null, an RLE object {size: [h, w], counts: string or list of run lengths} "
                      "or a list of polygons [x1, y1, x2, y2, x3, y3, ...]")
#: characters per value of a compressed RLE string: 7 hold any run length below 2**34
_MAX_RLE_GROUPS = 7


@dataclass(frozen=True)
class Instance:
    """One annotated object track of a video (per-frame RLEs, None where absent).

    ``areas`` are the file's own per-frame areas where it has them (``ytvoseval`` takes an
    object's size for the S/M/L ranges from them, not from the masks)."""

    id: int
    category_id: int
    iscrowd: bool
    rles: tuple[dict[str, Any] | None, ...]
    areas: tuple[float | None, ...] | None = None


@dataclass(frozen=True)
class Video:
    """One video: frame files in order and its instances."""

    id: int
    height: int
    width: int
    frame_paths: tuple[Path, ...]
    instances: tuple[Instance, ...]
    #: first frames of new scenes (optional ``scene_cuts`` of the video entry; the synthetic videos record theirs)
    scene_cuts: tuple[int, ...] = ()

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


def short_repr(value: Any, limit: int = 40) -> str:
    """``repr(value)`` cut to ``limit`` characters, so that an error message stays one short line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_integer(value: Any) -> bool:
    """True for an integer that is not a bool (JSON ``true`` is not an id)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def finite_number(value: Any) -> float | None:
    """``value`` as a float if it is a finite real number (not a bool), else None."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer beyond float range
        return None
    return number if math.isfinite(number) else None


def check_rle_string(counts: str, pixels: int) -> None:
    """Check a compressed RLE string (pycocotools' scheme) in time linear in its length.

    Each value is 1 to 7 characters in ``'0'..'o'``, 5 bits each, low bits first; bit 0x20 of a
    character means "more follows", bit 0x10 of the last one is the sign; from the fourth value on,
    a value is the difference to the run two places back. The runs must be >= 0 and sum to
    ``pixels``. ValueError otherwise: pycocotools reads past a cut-off string, and merging runs
    that do not cover the frame never ends (one flipped character is enough).
    """
    def undecodable(problem: str) -> ValueError:
        return ValueError(f"undecodable RLE counts {short_repr(counts)}: {problem}; allowed: a compressed RLE "
                          f"string whose runs cover the {pixels} pixels of the frame")

    if not counts.isascii():
        raise undecodable("a character outside '0'..'o'")
    codes = np.frombuffer(counts.encode("ascii"), dtype=np.uint8).astype(np.int64) - 48
    if ((codes < 0) | (codes > 63)).any():
        raise undecodable("a character outside '0'..'o'")
    more = (codes & 0x20) != 0
    if more[-1:].any():
        raise undecodable("the last value is cut off")
    ends = np.flatnonzero(~more)
    starts = np.concatenate(([0], ends + 1))[:-1].astype(np.int64)
    groups = ends - starts + 1
    if (groups > _MAX_RLE_GROUPS).any():
        raise undecodable(f"a value longer than {_MAX_RLE_GROUPS} characters")
    runs = _rle_runs(codes, starts, groups)
    if ((runs < 0) | (runs > pixels)).any():
        raise undecodable("a run below 0 or beyond the frame")
    if int(runs.sum()) != pixels:
        raise undecodable(f"runs summing to {int(runs.sum())}")


def _rle_runs(codes: np.ndarray, starts: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Run lengths of a compressed RLE string from its character codes and value boundaries."""
    if not starts.size:
        return np.zeros(0, dtype=np.int64)
    value_of = np.repeat(np.arange(starts.size), groups)
    shifts = 5 * (np.arange(codes.size) - starts[value_of])
    values = np.add.reduceat((codes & 0x1F) << shifts, starts)
    negative = (codes[starts + groups - 1] & 0x10) != 0
    values[negative] -= np.left_shift(1, 5 * groups[negative])
    runs = values.copy()
    runs[1::2] = np.cumsum(values[1::2])  # run m (m > 2) = its value + run m - 2
    runs[2::2] = np.cumsum(values[2::2])
    return runs


def _rle_of_dict(segmentation: dict[str, Any], height: int, width: int) -> dict[str, Any]:
    """Compressed RLE of an RLE object (string or list counts) of a ``height`` x ``width`` frame."""
    if "counts" not in segmentation or "size" not in segmentation:
        raise ValueError(f"an RLE object needs 'counts' and 'size'; allowed: {SEGMENTATION_FORMS}")
    size = segmentation["size"]
    if not (isinstance(size, list) and len(size) == 2 and all(map(is_integer, size)) and size == [height, width]):
        raise ValueError(f"RLE size {short_repr(size)} is not the video's; allowed: [{height}, {width}]")
    counts = segmentation["counts"]
    if isinstance(counts, str):
        check_rle_string(counts, height * width)
        return {"size": [height, width], "counts": counts}
    if isinstance(counts, list) and all(is_integer(c) and c >= 0 for c in counts):
        if sum(counts) != height * width:
            raise ValueError(f"RLE run lengths sum to {sum(counts)}; allowed: runs covering the "
                             f"{height * width} pixels of the frame")
        rle = mask_utils.frPyObjects({"size": [height, width], "counts": [int(c) for c in counts]}, height, width)
        return {"size": [height, width], "counts": rle["counts"].decode("ascii")}
    raise ValueError(f"RLE counts {short_repr(counts)}; allowed: a compressed RLE string or a list of run lengths >= 0")


def _check_polygon(polygon: Any, height: int, width: int) -> None:
    """ValueError unless ``polygon`` is ``[x1, y1, ...]`` of >= 3 points within the frame's reach.

    Points may lie outside the frame (pycocotools clips), but no further than one frame size:
    pycocotools' polygon fill takes time and memory in proportion to the edges' lengths.
    """
    coords = [finite_number(v) for v in polygon] if isinstance(polygon, list) else []
    if len(coords) < 6 or len(coords) % 2 or None in coords:
        raise ValueError(f"polygon {short_repr(polygon)}; allowed: a list [x1, y1, x2, y2, x3, y3, ...] of "
                         "an even number (>= 6) of finite numbers")
    xs, ys = coords[0::2], coords[1::2]
    if not (all(-width <= x <= 2 * width for x in xs) and all(-height <= y <= 2 * height for y in ys)):
        raise ValueError(f"polygon {short_repr(polygon)} reaches too far; allowed: x in [{-width}, {2 * width}], "
                         f"y in [{-height}, {2 * height}]")


def _rle_of_polygons(polygons: list[Any], height: int, width: int) -> dict[str, Any]:
    """Compressed RLE of the union of polygons on a ``height`` x ``width`` frame."""
    for polygon in polygons:
        _check_polygon(polygon, height, width)
    rles = mask_utils.frPyObjects([[float(v) for v in p] for p in polygons], height, width)
    return {"size": [height, width], "counts": mask_utils.merge(rles)["counts"].decode("ascii")}


def to_rle(segmentation: Any, height: int, width: int) -> dict[str, Any] | None:
    """Compressed RLE (counts as str) of one frame's segmentation; None where absent.

    ``null``, ``[]`` and ``{}`` are absent (``ytvoseval`` tests a segmentation's truth value).
    Compressed RLE, uncompressed RLE and polygon lists are checked in time linear in their length
    before pycocotools sees them; ValueError (a message ending in what is allowed) otherwise.
    """
    if segmentation is None or (isinstance(segmentation, (list, dict)) and not segmentation):
        return None
    if isinstance(segmentation, dict):
        return _rle_of_dict(segmentation, height, width)
    if isinstance(segmentation, list):
        return _rle_of_polygons(segmentation, height, width)
    raise ValueError(f"segmentation {short_repr(segmentation)}; allowed: {SEGMENTATION_FORMS}")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: annotation file not found") from None
    except RecursionError:
        raise ConfigError(f"{path}: not readable JSON (nested too deeply)") from None
    except (OSError, ValueError) as error:
        raise ConfigError(f"{path}: not readable JSON ({error})") from None
    for key in ("videos", "annotations", "categories"):
        if not isinstance(data.get(key) if isinstance(data, dict) else None, list):
            raise ConfigError(f"{path}: missing list '{key}'")
    return data


def few(values: set[Any], limit: int = 5) -> str:
    """Up to ``limit`` of ``values``, sorted by their text, for a one-line message."""
    shown = sorted(values, key=str)
    return ", ".join(map(str, shown[:limit])) + (", ..." if len(shown) > limit else "")


class Annotations:
    """A validated YouTube-VIS annotation file (no frames needed): videos, instances, categories.

    ``warnings``: one-line notes on what was accepted but left out (annotations of a category
    missing from the category list), for the caller to log once its own checks have passed.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        data = _read_json(self.path)
        self.categories = dict(self._category(c) for c in data["categories"])
        self.videos: dict[int, dict[str, Any]] = dict(self._video(v) for v in data["videos"])
        self.instances: dict[int, list[Instance]] = {vid: [] for vid in self.videos}
        dropped = [ann["category_id"] for ann in data["annotations"] if not self._add(ann)]
        self.warnings: tuple[str, ...] = (
            f"{self.path}: {len(dropped)} annotations of category_id {few(set(dropped))}, missing from the "
            "category list; dropped, as ytvoseval does",) if dropped else ()
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

    def _category(self, category: Any) -> tuple[int, str]:
        """Id and name of one entry of ``categories``."""
        if not (isinstance(category, dict) and is_integer(category.get("id"))):
            raise self.fail(f"category {short_repr(category)}", "allowed: an object with an integer id and a name")
        return int(category["id"]), str(category.get("name", category["id"]))

    def _video(self, video: Any) -> tuple[int, dict[str, Any]]:
        """Id and metadata of one entry of ``videos``."""
        ident = short_repr(video.get("id", "?")) if isinstance(video, dict) else "?"
        if not (isinstance(video, dict) and all(is_integer(video.get(k)) for k in ("id", "height", "width"))
                and video["height"] >= 1 and video["width"] >= 1 and isinstance(video.get("file_names"), list)
                and all(isinstance(name, str) for name in video["file_names"])):
            raise self.fail(f"video {ident}", "needs id, height, width and file_names; allowed: integers "
                            "(height, width >= 1) and a list of file names")
        names = video["file_names"]
        if "length" in video and video["length"] != len(names):
            raise self.fail(f"video {ident}", f"length {short_repr(video['length'])} disagrees with its "
                            f"{len(names)} file_names; allowed: length = the number of file_names")
        cuts = video.get("scene_cuts", [])
        if not (isinstance(cuts, list) and all(is_integer(t) and 0 < t < len(names) for t in cuts)):
            raise self.fail(f"video {ident}", f"scene_cuts {short_repr(cuts)}; allowed: a list of frame indices "
                            f"1 .. {len(names) - 1} (the first frame of each new scene)")
        return int(video["id"]), {"height": int(video["height"]), "width": int(video["width"]),
                                  "file_names": list(names), "scene_cuts": tuple(sorted(int(t) for t in cuts))}

    def _add(self, ann: Any) -> bool:
        """Check one annotation and add it to its video; False (left out) if its category is not listed."""
        if not (isinstance(ann, dict) and is_integer(ann.get("id"))):
            shown = short_repr(ann.get("id") if isinstance(ann, dict) else ann)
            raise self.fail(f"annotation {shown}", "needs an integer id; allowed: an object with an integer id")
        ann_id, vid, category = ann["id"], ann.get("video_id"), ann.get("category_id")
        if not (is_integer(vid) and vid in self.videos):
            raise self.fail(f"annotation {ann_id}", f"unknown video_id {short_repr(vid)}")
        where = f"annotation {ann_id} (video {vid})"
        if not is_integer(category):
            raise self.fail(where, f"category_id {short_repr(category)}; allowed: an integer")
        if category not in self.categories:
            return False
        meta = self.videos[vid]
        rles = self._rles(ann.get("segmentations"), meta, where)
        self.instances[vid].append(Instance(int(ann_id), int(category), bool(ann.get("iscrowd", 0)), rles,
                                            self._areas(ann.get("areas"), where)))
        return True

    def _rles(self, segmentations: Any, meta: dict[str, Any], where: str) -> tuple[dict[str, Any] | None, ...]:
        """Compressed RLE (or None) of each frame of an annotation's ``segmentations``."""
        length = len(meta["file_names"])
        if not isinstance(segmentations, list) or len(segmentations) != length:
            n = len(segmentations) if isinstance(segmentations, list) else "no"
            raise self.fail(where, f"has {n} segmentations for a video of {length} frames")
        rles = []
        for index, segmentation in enumerate(segmentations):
            try:
                rles.append(to_rle(segmentation, meta["height"], meta["width"]))
            except ValueError as error:
                raise self.fail(f"{where} frame {index}", str(error)) from None
        return tuple(rles)

    def _areas(self, areas: Any, where: str) -> tuple[float | None, ...] | None:
        """The annotation's own per-frame ``areas`` (None if it has none)."""
        if areas is None:
            return None
        allowed = "allowed: a list of per-frame areas, numbers >= 0 or null"
        if not isinstance(areas, list):
            raise self.fail(where, f"areas {short_repr(areas)}; {allowed}")
        values = [None if a is None else finite_number(a) for a in areas]
        for area, value in zip(areas, values):
            if area is not None and (value is None or value < 0):
                raise self.fail(where, f"areas entry {short_repr(area)}; {allowed}")
        return tuple(values)

    def ground_truth(self) -> dict[str, Any]:
        """The annotations with every segmentation as compressed RLE (what the evaluator reads)."""
        annotations = []
        for vid, instances in self.instances.items():
            for inst in instances:
                ann = {"id": inst.id, "video_id": vid, "category_id": inst.category_id,
                       "iscrowd": int(inst.iscrowd), "segmentations": list(inst.rles)}
                if inst.areas is not None:
                    ann["areas"] = list(inst.areas)
                annotations.append(ann)
        videos = [{"id": v, "height": m["height"], "width": m["width"], "length": len(m["file_names"])}
                  for v, m in self.videos.items()]
        return {"videos": videos, "annotations": annotations,
                "categories": [{"id": k, "name": n} for k, n in self.categories.items()]}


def frame_problem(path: Path, height: int, width: int) -> str | None:
    """What is wrong with the frame file ``path`` of a ``height`` x ``width`` video, or None.

    Judged from the image header alone: ``Image.open`` identifies the format and reads the size
    lazily, without decoding a pixel (a few tens of microseconds per JPEG frame).
    """
    try:
        with Image.open(path) as image:
            frame_width, frame_height = image.size
    except FileNotFoundError:
        return f"file {path} is missing"
    except UnidentifiedImageError:
        return f"file {path} is not an image; allowed: an image file (JPEG, PNG, ...)"
    except (OSError, Image.DecompressionBombError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        return f"file {path} cannot be read as an image ({reason}); allowed: a readable image file"
    if (frame_height, frame_width) != (height, width):
        return (f"file {path} is {frame_height}x{frame_width} (height x width), not the video's {height}x{width}; "
                "allowed: frames of the video's height and width")
    return None


class YTVISDataset:
    """A validated YouTube-VIS split with its frames. ``videos`` in file order.

    Every frame file is checked from its header (it exists, is an image, has the video's height and
    width) before anything runs; see ``frame_problem``.
    """

    def __init__(self, root: str | Path, split: str):
        self.root = Path(root)
        self.split = split
        self.annotations = Annotations(self.root / "annotations" / f"instances_{split}.json")
        self.categories = self.annotations.categories
        self.sha256 = self.annotations.sha256
        self.frames_dir = self.root / (self.annotations.frames_split or split) / "JPEGImages"
        self.videos = [self._video(vid, meta) for vid, meta in self.annotations.videos.items()]
        for message in self.annotations.warnings:
            logger.warning(message)

    def _video(self, vid: int, meta: dict[str, Any]) -> Video:
        """Video ``vid`` with its frame files checked (ConfigError naming the file and the video)."""
        paths = tuple(self.frames_dir / name for name in meta["file_names"])
        for index, path in enumerate(paths):
            problem = frame_problem(path, meta["height"], meta["width"])
            if problem is not None:
                raise self.annotations.fail(f"video {vid} frame {index}", problem)
        return Video(vid, meta["height"], meta["width"], paths, tuple(self.annotations.instances[vid]),
                     meta["scene_cuts"])

    def check_not_empty(self, key: str) -> None:
        """ConfigError (one line naming the split, ``key`` of the config, and the root) if no video has a frame."""
        if not any(len(video) for video in self.videos):
            raise ConfigError(f"{key} '{self.split}' of {self.root} is empty: {self.annotations.path.name} lists no "
                              "video with frames; allowed: a split with at least one video")

    def ground_truth(self) -> dict[str, Any]:
        """See ``Annotations.ground_truth``."""
        return self.annotations.ground_truth()
