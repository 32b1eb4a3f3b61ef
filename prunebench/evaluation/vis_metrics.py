"""YouTube-VIS AP (spatio-temporal mask IoU) and frame-level COCO bbox/segm AP.

Video AP follows the official ``youtubevos/cocoapi`` ``ytvoseval`` exactly. That evaluator is
COCOeval with videos in place of images; the only differences are:

- IoU of a detection track d and a ground-truth track g: Σ_t |d_t ∩ g_t| / Σ_t |d_t ∪ g_t| over the
  frames where either is present (frames where both are empty add nothing); 0 if the union is 0.
  Crowd tracks get the same IoU (no COCO crowd formula); they only become "ignore".
- the area of a track (for the 128² / 256² ranges, of ground truth and detections alike) is the
  mean of its non-empty per-frame areas (0 if none).

So this module runs pycocotools' own COCOeval matching, accumulation and summary with one
"image" per video and overrides only the IoU. Frame AP scores each frame as a COCO image with
pycocotools. All AP-like numbers are percent (0–100); undefined ones (no ground truth in that
area range / category set) are None.
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from prunebench.errors import ConfigError

#: YouTube-VIS area ranges (all, small, medium, large) on a track's mean non-empty area
VIDEO_AREA_RANGES = ((0, 1e5**2), (0, 128**2), (128**2, 256**2), (256**2, 1e5**2))
SUMMARY_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10")


def _rle(segmentation: dict[str, Any]) -> dict[str, Any]:
    counts = segmentation["counts"]
    if isinstance(counts, list):
        h, w = segmentation["size"]
        return mask_utils.frPyObjects(segmentation, h, w)
    return {"size": list(segmentation["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def _mean_area(rles: Sequence[dict[str, Any] | None]) -> float:
    areas = [float(mask_utils.area(r)) for r in rles if r is not None]
    areas = [a for a in areas if a]
    return float(np.mean(areas)) if areas else 0.0


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


def check_results(results: Any, gt: dict[str, Any], source: str = "results") -> None:
    """One-line ConfigError for a results list that does not fit the ground truth."""
    if not isinstance(results, list):
        raise ConfigError(f"{source}: expected a JSON list of detections")
    lengths = {v["id"]: v.get("length") for v in gt["videos"]}
    categories = {c["id"] for c in gt["categories"]}
    for k, det in enumerate(results):
        if not isinstance(det, dict) or not {"video_id", "category_id", "score", "segmentations"} <= set(det):
            raise ConfigError(f"{source}: item {k} needs video_id, category_id, score and segmentations")
        if det["video_id"] not in lengths:
            raise ConfigError(f"{source}: item {k}: unknown video_id {det['video_id']!r}")
        if det["category_id"] not in categories:
            raise ConfigError(f"{source}: item {k}: unknown category_id {det['category_id']!r}; allowed: {sorted(categories)}")
        length = lengths[det["video_id"]]
        if length is not None and len(det["segmentations"]) != length:
            raise ConfigError(
                f"{source}: item {k}: {len(det['segmentations'])} segmentations for video "
                f"{det['video_id']} of {length} frames"
            )


def _video_evaluation(gt: dict[str, Any], results: list[dict[str, Any]]) -> _VideoEval:
    """The video evaluator with every video's detections matched (``evaluate`` done once)."""
    tubes: dict[int, list[dict[str, Any] | None]] = {}
    images = [{"id": v["id"]} for v in gt["videos"]]

    def as_coco(tracks: list[dict[str, Any]], offset: int, is_gt: bool) -> list[dict[str, Any]]:
        out = []
        for k, track in enumerate(tracks):
            ann_id = offset + k + 1
            tubes[ann_id] = [None if s is None else _rle(s) for s in track["segmentations"]]
            ann = {"id": ann_id, "image_id": track["video_id"], "category_id": track["category_id"],
                   "area": _mean_area(tubes[ann_id]), "bbox": [0.0, 0.0, 0.0, 0.0]}
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


def _accumulated(evaluator: COCOeval, image_ids: list[int] | None = None) -> dict[str, float | None]:
    """Summary of an evaluated COCOeval over ``image_ids`` (default: all); matching is not redone."""
    params = copy.copy(evaluator.params)
    if image_ids is not None:
        params.imgIds = image_ids
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.accumulate(params)
        evaluator.summarize()
    stats = evaluator.stats
    return {k: _percent(v) for k, v in zip(SUMMARY_KEYS, stats[:len(SUMMARY_KEYS)])}


def video_ap(gt: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, float | None]:
    """YouTube-VIS AP, AP50, AP75, APs/m/l, AR1, AR10 (percent; None where undefined)."""
    return _accumulated(_video_evaluation(gt, results))


def per_video_ap(gt: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, float | None]:
    """Video AP of each video on its own (percent, keyed by the video id as a string; None where the
    video has no ground truth). The statistical unit of the leaderboard's paired test."""
    evaluator = _video_evaluation(gt, results)
    return {str(v["id"]): _accumulated(evaluator, [v["id"]])["AP"] for v in gt["videos"]}


def frame_ap(gt: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, float | None]:
    """Frame-level COCO AP (pycocotools): ``mAP_bbox`` and ``mAP_segm``, each frame an image."""
    images, image_of = [], {}
    for video in gt["videos"]:
        for t in range(video["length"]):
            image_of[video["id"], t] = len(images) + 1
            images.append({"id": len(images) + 1, "height": video["height"], "width": video["width"]})

    def per_frame(tracks: list[dict[str, Any]], is_gt: bool) -> list[dict[str, Any]]:
        out = []
        for track in tracks:
            for t, seg in enumerate(track["segmentations"]):
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


def score_results(gt: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, float | None]:
    """Everything ``prunebench metrics`` reports: video AP family plus frame mAP_bbox / mAP_segm."""
    check_results(results, gt)
    return {**video_ap(gt, results), **frame_ap(gt, results)}
