"""YouTube-VIS AP against hand-computed values (rules of the official ytvoseval)."""

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from prunebench.errors import ConfigError
from prunebench.evaluation.vis_metrics import frame_ap, score_results, video_ap

H = W = 20


def rle(x0, y0, size=5, h=H, w=W):
    m = np.zeros((h, w), dtype=np.uint8)
    m[y0:y0 + size, x0:x0 + size] = 1
    r = mask_utils.encode(np.asfortranarray(m))
    return {"size": [h, w], "counts": r["counts"].decode("ascii")}


def gt_of(tracks, lengths=None, categories=(1, 2), h=H, w=W):
    """tracks: list of (video_id, category_id, segmentations[, iscrowd])."""
    lengths = lengths or {}
    videos = sorted({t[0] for t in tracks} | set(lengths))
    annotations = []
    for k, t in enumerate(tracks):
        annotations.append({"id": k + 1, "video_id": t[0], "category_id": t[1], "segmentations": t[2],
                            "iscrowd": t[3] if len(t) > 3 else 0})
    return {
        "videos": [{"id": v, "height": h, "width": w, "length": lengths[v] if v in lengths else len(tracks[0][2])} for v in videos],
        "annotations": annotations,
        "categories": [{"id": c, "name": f"c{c}"} for c in categories],
    }


def det(video, category, score, segs):
    return {"video_id": video, "category_id": category, "score": score, "segmentations": segs}


A = [rle(2, 2), rle(3, 2)]
B = [rle(12, 12), rle(12, 11)]


def test_ground_truth_as_prediction_scores_100():
    gt = gt_of([(1, 1, A), (1, 2, B)])
    result = score_results(gt, [det(1, 1, 0.9, A), det(1, 2, 0.8, B)])
    for key in ("AP", "AP50", "AP75", "APs", "AR10", "mAP_bbox", "mAP_segm"):
        assert result[key] == pytest.approx(100.0), key
    assert result["APm"] is None and result["APl"] is None  # no ground truth in those ranges


def test_shifted_masks():
    # 5x5 squares shifted by one pixel in both frames: IoU = 2·20 / 2·30 = 2/3,
    # matched at IoU thresholds 0.50, 0.55, 0.60, 0.65 -> AP = 4/10
    gt = gt_of([(1, 1, A)])
    shifted = [rle(3, 2), rle(4, 2)]
    result = video_ap(gt, [det(1, 1, 0.9, shifted)])
    assert result["AP"] == pytest.approx(40.0)
    assert result["AP50"] == pytest.approx(100.0)
    assert result["AP75"] == pytest.approx(0.0)


def test_swapped_identities():
    # 3 frames; the two predicted tracks swap objects in the last frame:
    # IoU = (25 + 25) / (25 + 25 + 50) = 0.5 -> matched only at 0.50
    a, b = rle(2, 2), rle(12, 12)
    gt = gt_of([(1, 1, [a, a, a]), (1, 1, [b, b, b])])
    result = video_ap(gt, [det(1, 1, 0.9, [a, a, b]), det(1, 1, 0.8, [b, b, a])])
    assert result["AP50"] == pytest.approx(100.0)
    assert result["AP"] == pytest.approx(10.0)


def test_missing_frames():
    # exact in frame 0, absent in frame 1: IoU = 25 / 50 = 0.5
    gt = gt_of([(1, 1, A)])
    result = video_ap(gt, [det(1, 1, 0.9, [A[0], None])])
    assert result["AP"] == pytest.approx(10.0)
    assert result["AP50"] == pytest.approx(100.0)


def test_ground_truth_absent_in_some_frames():
    # the object leaves after frame 0; a prediction that keeps a mask in frame 1 pays in the union
    gt = gt_of([(1, 1, [A[0], None])])
    result = video_ap(gt, [det(1, 1, 0.9, A)])
    assert result["AP"] == pytest.approx(10.0)


def test_duplicates():
    # two videos, one object each. Ranked: TP (0.9), duplicate FP (0.8), TP (0.7).
    # precision [1, .5, 2/3], recall [.5, .5, 1] -> interpolated 1 for r <= .5 (51 points), 2/3 above (50)
    gt = gt_of([(1, 1, A), (2, 1, B)])
    dets = [det(1, 1, 0.9, A), det(1, 1, 0.8, A), det(2, 1, 0.7, B)]
    expected = 100 * (51 + 50 * (2 / 3)) / 101
    assert video_ap(gt, dets)["AP"] == pytest.approx(expected)


def test_crowd_regions_are_ignored():
    crowd = [rle(12, 12), rle(12, 12)]
    dets = [det(1, 1, 0.9, crowd), det(1, 1, 0.8, A)]
    with_crowd = gt_of([(1, 1, A), (1, 1, crowd, 1)])
    assert video_ap(with_crowd, dets)["AP"] == pytest.approx(100.0)  # the crowd match is ignored
    without = gt_of([(1, 1, A)])
    assert video_ap(without, dets)["AP"] == pytest.approx(50.0)  # the same detection is then an FP


def test_empty_results():
    gt = gt_of([(1, 1, A)])
    result = score_results(gt, [])
    assert result["AP"] == 0.0 and result["mAP_segm"] == 0.0 and result["AR1"] == 0.0
    assert result["APm"] is None


def test_categories_without_ground_truth_are_left_out():
    gt = gt_of([(1, 1, A)], categories=(1, 2))
    result = video_ap(gt, [det(1, 1, 0.9, A), det(1, 2, 0.95, B)])
    assert result["AP"] == pytest.approx(100.0)  # category 2 has no GT: undefined, not 0


def test_no_ground_truth_at_all_is_null():
    gt = gt_of([], lengths={1: 2})
    assert video_ap(gt, [det(1, 1, 0.9, A)])["AP"] is None


def test_area_ranges_use_mean_of_non_empty_frames():
    big = rle(0, 0, size=150, h=300, w=300)  # 22500 px: "medium" (128² .. 256²)
    gt = gt_of([(1, 1, [big, None])], h=300, w=300)
    result = video_ap(gt, [det(1, 1, 0.9, [big, None])])
    assert result["APm"] == pytest.approx(100.0)
    assert result["APs"] is None and result["APl"] is None


def test_frame_ap():
    gt = gt_of([(1, 1, A)])
    assert frame_ap(gt, [det(1, 1, 0.9, A)]) == {"mAP_bbox": pytest.approx(100.0), "mAP_segm": pytest.approx(100.0)}
    half = frame_ap(gt, [det(1, 1, 0.9, [A[0], None])])  # one of the two frames found
    assert half["mAP_segm"] == pytest.approx(100 * 51 / 101)


def test_results_that_do_not_fit_the_ground_truth():
    gt = gt_of([(1, 1, A)])
    with pytest.raises(ConfigError, match="2 frames"):
        score_results(gt, [det(1, 1, 0.9, [A[0]])])
    with pytest.raises(ConfigError, match="unknown category_id 7"):
        score_results(gt, [det(1, 7, 0.9, A)])
