"""YouTube-VIS AP (spatio-temporal mask IoU) and frame-level COCO bbox/segm AP.

Video AP follows the official ``youtubevos/cocoapi`` ``ytvoseval`` exactly. That evaluator is
COCOeval with videos in place of images; the only differences are:

- IoU of a detection track d and a ground-truth track g: Σ_t |d_t ∩ g_t| / Σ_t |d_t ∪ g_t| over the
  frames where either is present (frames where both are empty add nothing); 0 if the union is 0.
  Crowd tracks get the same IoU (no COCO crowd formula); they only become "ignore".
- the area of a track (for the 128² / 256² ranges) is the mean of its non-empty per-frame areas
  (0 if none): a ground-truth annotation's own ``areas`` field, a detection's mask areas.

So this module runs pycocotools' own COCOeval matching, accumulation and summary with one
"image" per video and overrides only the IoU. Frame AP scores each frame as a COCO image with
pycocotools. All AP-like numbers are percent (0–100); undefined ones (no ground truth in that
area range / category set) are None.

Where ytvoseval's rules reach but its code crashes or miscounts, this module follows the rules:
results may hold uncompressed RLE and polygons (converted on the video's frame size, areas from
the masks); a ground-truth annotation without ``areas`` is sized by its masks; ground-truth and
result ids are renumbered from 1 (ytvoseval takes a match to annotation id 0 for "no match").
Results are checked (``check_results``) before pycocotools sees them, in time linear in the
file: one-line ``ConfigError`` for anything malformed; tracks of a category missing from the
ground truth are dropped and tracks longer or shorter than their video are scored on the frames
they share with it (ytvoseval's ``zip``; their S/M/L area is the mean over all their frames, as
there), each with one warning.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from prunebench.data.ytvis import few, finite_number, is_integer, short_repr, to_rle
from prunebench.errors import ConfigError

logger = logging.getLogger(__name__)

#: YouTube-VIS area ranges (all, small, medium, large) on a track's mean non-empty area
VIDEO_AREA_RANGES = ((0, 1e5**2), (0, 128**2), (128**2, 256**2), (256**2, 1e5**2))
SUMMARY_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10")
#: the keys every result track needs
RESULT_KEYS = ("video_id", "category_id", "score", "segmentations")


def _rle(segmentation: dict[str, Any]) -> dict[str, Any]:
    """pycocotools' form (bytes counts) of a checked compressed RLE."""
    return {"size": list(segmentation["size"]), "counts": segmentation["counts"].encode("ascii")}


def _mean_nonzero(areas: Iterable[float | None]) -> float:
    """Mean of the non-empty per-frame areas, 0 if none (ytvoseval's ``avg_area``)."""
    present = [float(a) for a in areas if a]
    return float(np.mean(present)) if present else 0.0


def _track_area(track: dict[str, Any], tube: Sequence[dict[str, Any] | None], is_gt: bool) -> float:
    """A track's size for the S/M/L ranges: ground truth's own ``areas`` where it has them, else its masks."""
    if is_gt and track.get("areas") is not None:
        return _mean_nonzero(track["areas"])
    return _mean_nonzero(float(mask_utils.area(r)) for r in tube if r is not None)


def _tube_iou(d_seq: Sequence[dict[str, Any] | None], g_seq: Sequence[dict[str, Any] | None]) -> float:
    inter = union = 0.0
    for d, g in zip(d_seq, g_seq):
        if d is not None and g is not None:
            inter += float(mask_utils.area(mask_utils.merge([d, g], intersect=True)))
            union += float(mask_utils.area(mask_utils.merge([d, g], intersect=False)))
        elif g is not None:
            union += float(mask_utils.area(g))
        elif d is not None:
            union += float(mask_utils.area(d))
    return inter / union if union > 0 else 0.0


class _VideoEval(COCOeval):
    """COCOeval with one image per video and the spatio-temporal tube IoU."""

    def __init__(self, gt: COCO, dt: COCO, tubes: dict[int, list[dict[str, Any] | None]]):
        super().__init__(gt, dt, iouType="bbox")  # "bbox": COCOeval then leaves our annotations alone
        self.params.areaRng = [list(r) for r in VIDEO_AREA_RANGES]
        self._tubes = tubes

    def computeIoU(self, imgId: int, catId: int) -> np.ndarray | list:  # noqa: N802 (COCOeval's name)
        p = self.params
        gt = self._gts[imgId, catId] if p.useCats else [g for c in p.catIds for g in self._gts[imgId, c]]
        dt = self._dts[imgId, catId] if p.useCats else [d for c in p.catIds for d in self._dts[imgId, c]]
        if not gt and not dt:
            return []
        order = np.argsort([-d["score"] for d in dt], kind="mergesort")
        dt = [dt[i] for i in order][: p.maxDets[-1]]
        ious = np.zeros((len(dt), len(gt)))
        for i, j in np.ndindex(ious.shape):
            ious[i, j] = _tube_iou(self._tubes[dt[i]["id"]], self._tubes[gt[j]["id"]])
        return ious


def _percent(value: float) -> float | None:
    return None if value < 0 else float(value) * 100.0


def _summary(evaluator: COCOeval) -> dict[str, float | None]:
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
    return _accumulated(evaluator)


def _index(dataset: dict[str, Any]) -> COCO:
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def load_results(path: str | Path) -> Any:
    """The parsed JSON of a results file; one-line ConfigError if it cannot be read as JSON."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise ConfigError(f"{path}: results file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder; allowed: a JSON file") from None
    except OSError as error:
        raise ConfigError(f"{path}: not readable ({error.strerror})") from None
    try:
        return json.loads(data)
    except RecursionError:
        raise ConfigError(f"{path}: not readable JSON (nested too deeply)") from None
    except ValueError as error:
        raise ConfigError(f"{path}: not readable JSON ({error})") from None


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def _check_track(item: Any, where: str, videos: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """One result track with every segmentation as compressed RLE or None; ConfigError if malformed."""
    allowed = f"allowed: an object with {', '.join(RESULT_KEYS)}"
    if not isinstance(item, dict):
        raise ConfigError(f"{where}: a JSON {_json_type(item)}; {allowed}")
    missing = [key for key in RESULT_KEYS if key not in item]
    if missing:
        raise ConfigError(f"{where}: no {' or '.join(missing)}; {allowed}")
    video_id = item["video_id"]
    if not (is_integer(video_id) and video_id in videos):
        raise ConfigError(f"{where}: video_id {short_repr(video_id)} is not a video of the ground truth; "
                          f"allowed: one of its {len(videos)} video ids ({few(set(videos))})")
    where = f"{where} (video {video_id})"
    if not is_integer(item["category_id"]):
        raise ConfigError(f"{where}: category_id {short_repr(item['category_id'])}; allowed: an integer")
    score = finite_number(item["score"])
    if score is None:
        raise ConfigError(f"{where}: score {short_repr(item['score'])} is not a finite number; allowed: a number")
    segmentations = item["segmentations"]
    if not isinstance(segmentations, list):
        raise ConfigError(f"{where}: segmentations {short_repr(segmentations)}; allowed: a list with one "
                          "segmentation per frame")
    video = videos[video_id]
    rles = []
    for t, segmentation in enumerate(segmentations):
        try:
            rles.append(to_rle(segmentation, video["height"], video["width"]))
        except ValueError as error:
            raise ConfigError(f"{where} frame {t}: {error}") from None
    return {"video_id": int(video_id), "category_id": int(item["category_id"]), "score": score, "segmentations": rles}


def _tracks(count: int) -> str:
    """``count`` tracks in words: "1 track", "2 tracks"."""
    return f"{count} track{'' if count == 1 else 's'}"


def _length_warning(tracks: list[dict[str, Any]], lengths: dict[int, int], source: str) -> list[str]:
    """One warning if some tracks have more or fewer frames than their video."""
    longer = sum(len(t["segmentations"]) > lengths[t["video_id"]] for t in tracks)
    shorter = sum(len(t["segmentations"]) < lengths[t["video_id"]] for t in tracks)
    if not longer + shorter:
        return []
    return [f"{source}: {_tracks(longer)} longer and {shorter} shorter than their video; each is scored on the "
            "frames it shares with its video, as ytvoseval does"]


class CheckedResults(NamedTuple):
    """Results that passed ``check_results``.

    ``tracks``: those of a listed category, every segmentation a compressed RLE (str counts) or
    None; ``warnings``: one line each on what was dropped or scored on fewer frames."""

    tracks: list[dict[str, Any]]
    warnings: list[str]


def check_results(results: Any, gt: dict[str, Any], source: str = "results") -> CheckedResults:
    """Check a results list against the ground truth; one-line ConfigError naming ``source`` and
    the item for anything malformed (linear time: no segmentation reaches pycocotools unchecked)."""
    if not isinstance(results, list):
        raise ConfigError(f"{source}: the top level is a JSON {_json_type(results)}; allowed: a list of result tracks")
    videos = {v["id"]: v for v in gt["videos"]}
    tracks = [_check_track(item, f"{source}: item {k}", videos) for k, item in enumerate(results)]
    listed = {c["id"] for c in gt["categories"]}
    kept = [t for t in tracks if t["category_id"] in listed]
    unlisted = {t["category_id"] for t in tracks} - listed
    warnings = [f"{source}: {_tracks(len(tracks) - len(kept))} of category_id {few(unlisted)}, missing from the "
                "ground truth's categories; dropped, as ytvoseval does"] if unlisted else []
    warnings += _length_warning(kept, {v: m["length"] for v, m in videos.items()}, source)
    return CheckedResults(kept, warnings)


def _video_evaluation(gt: dict[str, Any], results: list[dict[str, Any]]) -> _VideoEval:
    """The video evaluator with every video's detections matched (``evaluate`` done once).

    Annotations are renumbered from 1 (COCOeval reads a match to id 0 as "no match")."""
    tubes: dict[int, list[dict[str, Any] | None]] = {}
    images = [{"id": v["id"]} for v in gt["videos"]]

    def as_coco(tracks: list[dict[str, Any]], offset: int, is_gt: bool) -> list[dict[str, Any]]:
        out = []
        for k, track in enumerate(tracks):
            ann_id = offset + k + 1
            tubes[ann_id] = [None if s is None else _rle(s) for s in track["segmentations"]]
            ann = {"id": ann_id, "image_id": track["video_id"], "category_id": track["category_id"],
                   "area": _track_area(track, tubes[ann_id], is_gt), "bbox": [0.0, 0.0, 0.0, 0.0]}
            ann.update({"iscrowd": int(track.get("iscrowd", 0))} if is_gt else {"score": float(track["score"])})
            out.append(ann)
        return out

    gt_anns = as_coco(gt["annotations"], 0, is_gt=True)
    dt_anns = as_coco(results, len(gt_anns), is_gt=False)
    categories = copy.deepcopy(gt["categories"])
    coco_gt = _index({"images": images, "annotations": gt_anns, "categories": categories})
    coco_dt = _index({"images": images, "annotations": dt_anns, "categories": categories})
    evaluator = _VideoEval(coco_gt, coco_dt, tubes)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
    return evaluator


def _accumulated(evaluator: COCOeval) -> dict[str, float | None]:
    """Summary of an evaluated COCOeval over all its images; matching is not redone."""
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.accumulate()
        evaluator.summarize()
    stats = evaluator.stats
    return {k: _percent(v) for k, v in zip(SUMMARY_KEYS, stats[:len(SUMMARY_KEYS)])}


def video_ap(gt: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, float | None]:
    """YouTube-VIS AP, AP50, AP75, APs/m/l, AR1, AR10 (percent; None where undefined).

    ``results``: checked tracks (``check_results``) or the tracker's own, every segmentation a
    compressed RLE with str counts or None."""
    return _accumulated(_video_evaluation(gt, results))


def per_video_ap(gt: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, float | None]:
    """Video AP of each video on its own (percent, keyed by the video id as a string; None where the
    video has no ground truth). The statistical unit of the leaderboard's paired test. ``results``
    as for ``video_ap``.

    As pycocotools does for one image, only the categories present in the video count: a track of a category
    the video does not contain costs nothing here, while the dataset-level AP counts it as a false positive."""
    return _per_video(_video_evaluation(gt, results))


def _per_video(evaluator: COCOeval) -> dict[str, float | None]:
    """Per-video AP from an evaluated ``evaluator`` (its images are the videos); matching is not redone."""
    return {str(v): _accumulated(_one_image(evaluator, v))["AP"] for v in evaluator._paramsEval.imgIds}


def _one_image(evaluator: COCOeval, image_id: int) -> COCOeval:
    """A shallow copy of an evaluated ``evaluator`` restricted to one image: its parameters and its
    evaluated entries (one per category and area range). pycocotools' ``accumulate(params)`` with a
    shorter ``imgIds`` cannot do this: it indexes the evaluated entries by position in the shorter
    list, so for any single image it would read the first image's entries."""
    evaluated = evaluator._paramsEval
    position, images = evaluated.imgIds.index(image_id), len(evaluated.imgIds)
    areas, categories = len(evaluated.areaRng), len(evaluated.catIds) if evaluated.useCats else 1
    one = copy.copy(evaluator)
    one.params, one._paramsEval = copy.copy(evaluator.params), copy.copy(evaluated)
    one.params.imgIds = one._paramsEval.imgIds = [image_id]
    one.evalImgs = [evaluator.evalImgs[(k * areas + a) * images + position] for k in range(categories) for a in range(areas)]
    return one


def frame_ap(gt: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, float | None]:
    """Frame-level COCO AP (pycocotools): ``mAP_bbox`` and ``mAP_segm``, each frame an image of its
    video (a track's frames beyond its video's length are left out). ``results`` as for ``video_ap``.

    Every frame of a track is scored with the track's video-level score (there are no per-frame detector
    scores after tracking), so these are comparable between prunebench's rows, not to a paper's frame-level
    columns."""
    images, image_of = [], {}
    lengths = {video["id"]: video["length"] for video in gt["videos"]}
    for video in gt["videos"]:
        for t in range(video["length"]):
            image_of[video["id"], t] = len(images) + 1
            images.append({"id": len(images) + 1, "height": video["height"], "width": video["width"]})

    def per_frame(tracks: list[dict[str, Any]], is_gt: bool) -> list[dict[str, Any]]:
        out = []
        for track in tracks:
            for t, seg in enumerate(track["segmentations"][:lengths[track["video_id"]]]):
                if seg is None:
                    continue
                rle = _rle(seg)
                area = float(mask_utils.area(rle))
                if area == 0:
                    continue
                ann = {"id": len(out) + 1, "image_id": image_of[track["video_id"], t],
                       "category_id": track["category_id"], "segmentation": rle, "area": area,
                       "bbox": [float(x) for x in mask_utils.toBbox(rle)]}
                ann.update({"iscrowd": int(track.get("iscrowd", 0))} if is_gt else {"score": float(track["score"])})
                out.append(ann)
        return out

    categories = copy.deepcopy(gt["categories"])
    coco_gt = _index({"images": images, "annotations": per_frame(gt["annotations"], True), "categories": categories})
    coco_dt = _index({"images": images, "annotations": per_frame(results, False), "categories": categories})
    out = {}
    for iou_type, key in (("bbox", "mAP_bbox"), ("segm", "mAP_segm")):
        evaluator = COCOeval(coco_gt, coco_dt, iouType=iou_type)
        out[key] = _summary(evaluator)["AP"]
    return out


def score_results(gt: dict[str, Any], results: Any, source: str = "results",
                  notes: Sequence[str] = (), per_video: bool = False) -> dict[str, Any]:
    """Everything ``prunebench metrics`` reports: video AP family plus frame mAP_bbox / mAP_segm, and with
    ``per_video`` the AP of each video on its own (``per_video_AP``, as ``per_video_ap``) from the same matching.

    ``results`` are checked first (``check_results``, errors name ``source``); then ``notes``
    (the ground truth's own warnings) and the results' warnings are logged, one line each.
    """
    checked = check_results(results, gt, source)
    for message in (*notes, *checked.warnings):
        logger.warning(message)
    evaluator = _video_evaluation(gt, checked.tracks)
    scores: dict[str, Any] = {**_accumulated(evaluator), **frame_ap(gt, checked.tracks)}
    if per_video:
        scores["per_video_AP"] = _per_video(evaluator)
    return scores
