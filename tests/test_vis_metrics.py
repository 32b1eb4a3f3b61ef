"""YouTube-VIS AP against hand-computed values (rules of the official ytvoseval)."""

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from prunebench.data.ytvis import check_rle_string, to_rle
from prunebench.evaluation.vis_metrics import frame_ap, per_video_ap, score_results, video_ap

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


def test_track_shorter_than_its_video_is_scored_on_common_frames(caplog):
    # ytvoseval zips the two tracks: the ground truth's frames 1, 2 are not in the union -> IoU 1
    a = rle(2, 2)
    gt = gt_of([(1, 1, [a, a, a])])
    result = score_results(gt, [det(1, 1, 0.9, [a])])
    assert result["AP"] == pytest.approx(100.0)
    # frame AP: 1 of 3 frame objects found, precision 1 up to recall 1/3 (34 of 101 recall points)
    assert result["mAP_segm"] == pytest.approx(100 * 34 / 101)
    assert [r.getMessage() for r in caplog.records] == [
        "results: 0 tracks longer and 1 shorter than their video; each is scored on the frames it shares "
        "with its video, as ytvoseval does"]


def test_track_longer_than_its_video_is_cut_but_sized_on_all_its_frames(caplog):
    # 1-frame 300x300 video, a 5x5 object. d2 (0.95) misses it; d1 (0.9) matches it.
    # d2 = [150x150, 10x10, 10x10]: frames 1, 2 lie beyond the video, but its area (as in ytvoseval)
    # is (22500 + 100 + 100) / 3 = 7567 < 128^2: "small", so it counts as a false positive in APs:
    # precision [0, 1/2], recall [0, 1] -> 50 (it would be ignored if sized on frame 0 alone: 100)
    small, big, tiny = rle(2, 2, h=300, w=300), rle(100, 100, 150, h=300, w=300), rle(100, 100, 10, h=300, w=300)
    gt = gt_of([(1, 1, [small])], h=300, w=300)
    result = score_results(gt, [det(1, 1, 0.95, [big, tiny, tiny]), det(1, 1, 0.9, [small])])
    assert result["APs"] == pytest.approx(50.0) and result["AP"] == pytest.approx(50.0)
    assert result["mAP_segm"] == pytest.approx(50.0)  # frames 1, 2 of d2 left out; frame 0 ranked FP, TP
    assert len(caplog.records) == 1 and "1 track longer and 0 shorter" in caplog.records[0].getMessage()


def test_result_category_missing_from_the_ground_truth_is_dropped(caplog):
    gt = gt_of([(1, 1, A)], categories=(1, 2))
    with_unlisted = [det(1, 1, 0.9, A), det(1, 7, 0.95, A), det(1, 8, 0.95, B)]
    assert score_results(gt, with_unlisted) == score_results(gt, [det(1, 1, 0.9, A)])
    assert [r.getMessage() for r in caplog.records] == [
        "results: 2 tracks of category_id 7, 8, missing from the ground truth's categories; dropped, as ytvoseval does"]


def test_ground_truth_areas_field_decides_the_size_range():
    # the masks are 5x5 ("small"), the file's own areas say 20000 ("medium": 128^2 .. 256^2);
    # ytvoseval sizes ground truth by its areas field, the mean of the non-empty entries
    gt = gt_of([(1, 1, A)])
    gt["annotations"][0]["areas"] = [0, 20000]
    result = video_ap(gt, [det(1, 1, 0.9, A)])
    assert result["APm"] == pytest.approx(100.0) and result["APs"] is None
    del gt["annotations"][0]["areas"]  # no areas: sized by its masks
    result = video_ap(gt, [det(1, 1, 0.9, A)])
    assert result["APs"] == pytest.approx(100.0) and result["APm"] is None


def uncompressed(compressed):
    """The uncompressed RLE (list of run lengths) of a compressed one."""
    flat = mask_utils.decode({"size": compressed["size"], "counts": compressed["counts"].encode()}).flatten(order="F")
    changes = np.flatnonzero(np.diff(np.concatenate(([0], flat, [1 - flat[-1]]))))
    return {"size": compressed["size"], "counts": np.diff(np.concatenate(([0], changes))).tolist()}


def test_uncompressed_rle_and_polygon_results_score_like_compressed_rle():
    square = [[2, 2, 7, 2, 7, 7, 2, 7]]  # pycocotools fills the 5x5 square at (2, 2): rle(2, 2)
    assert uncompressed(A[0])["counts"][:3] == [42, 5, 15]  # 2 columns + 2 rows empty, 5 set, 15 empty
    gt = gt_of([(1, 1, A)])
    expected = score_results(gt, [det(1, 1, 0.9, A)])
    assert score_results(gt, [det(1, 1, 0.9, [square, uncompressed(A[1])])]) == expected
    assert expected["AP"] == pytest.approx(100.0)


def test_rle_string_check_agrees_with_pycocotools():
    rng = np.random.default_rng(0)
    for _ in range(50):
        h, w = (int(n) for n in rng.integers(1, 40, 2))
        mask = (rng.random((h, w)) < rng.random()).astype(np.uint8)
        counts = mask_utils.encode(np.asfortranarray(mask))["counts"].decode()
        check_rle_string(counts, h * w)
        assert to_rle(uncompressed({"size": [h, w], "counts": counts}), h, w)["counts"] == counts
        with pytest.raises(ValueError, match="undecodable RLE counts"):
            check_rle_string(counts, h * w + 1)


def test_per_video_ap_scores_each_video_on_its_own():
    """Three videos (one with two categories): each video's AP equals video_ap of that video alone."""
    shifted = [rle(3, 2), rle(4, 2)]
    gt = gt_of([(1, 1, A), (2, 1, A), (2, 2, B), (3, 2, B)])
    results = [det(1, 1, 0.9, A), det(2, 1, 0.9, shifted), det(2, 2, 0.8, B), det(3, 1, 0.7, B)]
    per_video = per_video_ap(gt, results)
    assert per_video == pytest.approx({"1": 100.0, "2": 70.0, "3": 0.0})  # video 2: (40 + 100) / 2
    scored = score_results(gt, results, per_video=True)  # the same from the evaluation's one matching
    assert scored.pop("per_video_AP") == per_video and scored == score_results(gt, results)
    for video in (1, 2, 3):
        alone = {**gt, "videos": [v for v in gt["videos"] if v["id"] == video],
                 "annotations": [a for a in gt["annotations"] if a["video_id"] == video]}
        expected = video_ap(alone, [r for r in results if r["video_id"] == video])["AP"]
        assert per_video[str(video)] == pytest.approx(expected if expected is not None else 0.0), video
