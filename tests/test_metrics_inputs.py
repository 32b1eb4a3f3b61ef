"""``prunebench metrics`` on every kind of input: what it accepts (and scores like ytvoseval's rules)
and what it refuses (exit 2, one line naming the file and the item, within seconds)."""

import copy
import json
import logging
import time

import pytest

from prunebench.platform.cli import main
from test_vis_metrics import A, B, rle, uncompressed

H = W = 20
SECONDS = 5.0


def video(vid, length=2):
    return {"id": vid, "height": H, "width": W, "length": length,
            "file_names": [f"v{vid}/{t:05d}.jpg" for t in range(length)]}


def ground_truth(annotations=None):
    """Two 2-frame videos, one object each: A (video 1, category 1), B (video 2, category 2)."""
    if annotations is None:
        annotations = [{"id": 1, "video_id": 1, "category_id": 1, "iscrowd": 0, "segmentations": A, "areas": [25, 25]},
                       {"id": 2, "video_id": 2, "category_id": 2, "iscrowd": 0, "segmentations": B}]
    return {"videos": [video(1), video(2)], "annotations": annotations,
            "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}


def valid_results():
    return copy.deepcopy([{"video_id": 1, "category_id": 1, "score": 0.9, "segmentations": A},
                          {"video_id": 2, "category_id": 2, "score": 0.8, "segmentations": B}])


def write(path, content):
    """``content`` as the file's bytes (bytes as they are, anything else as JSON)."""
    path.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
    return path


def metrics(capsys, gt, results):
    """Exit code, parsed stdout (None if empty) and stderr of ``prunebench metrics GT RESULTS --json``."""
    start = time.perf_counter()
    code = main(["metrics", str(gt), str(results), "--json"])
    assert time.perf_counter() - start < SECONDS
    captured = capsys.readouterr()
    return code, json.loads(captured.out) if captured.out else None, captured.err


def refused(capsys, gt, results, fragment):
    code, out, err = metrics(capsys, gt, results)
    assert code == 2 and out is None, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert fragment in err, err


@pytest.fixture
def gt_file(tmp_path):
    return write(tmp_path / "gt.json", ground_truth())


def with_item(**changes):
    """Valid results whose item 1 (video 2) has ``changes``; a value of ... removes the key."""
    def edit(results):
        results[1].update(changes)
        results[1] = {k: v for k, v in results[1].items() if v is not ...}
        return results
    return edit


def with_frame(segmentation):
    """Valid results whose item 1 (video 2) has ``segmentation`` in frame 0."""
    return with_item(segmentations=[segmentation, B[1]])


RUNS_BEYOND_THE_FRAME = "oooooo?" * 3  # three 7-character values of about 2**34 each
REFUSED = {
    "results_not_json": (lambda r: b"{nope", "results.json: not readable JSON (Expecting property name"),
    "results_truncated": (lambda r: json.dumps(r).encode()[:40], "results.json: not readable JSON"),
    "results_not_utf8": (lambda r: b"[\xff]", "results.json: not readable JSON"),
    "results_nested_too_deeply": (lambda r: b"[" * 100000 + b"]" * 100000,
                                  "results.json: not readable JSON (nested too deeply)"),
    "top_level_an_object": (lambda r: {"results": r},
                            "results.json: the top level is a JSON object; allowed: a list of result tracks"),
    "item_a_list": (lambda r: [[1]], "results.json: item 0: a JSON list; allowed: an object with video_id, "
                                     "category_id, score, segmentations"),
    "item_without_score": (with_item(score=...), "results.json: item 1: no score; allowed: an object with"),
    "unknown_video_id": (with_item(video_id=9), "results.json: item 1: video_id 9 is not a video of the ground "
                                                "truth; allowed: one of its 2 video ids (1, 2)"),
    "video_id_a_string": (with_item(video_id="2"), "item 1: video_id '2' is not a video of the ground truth"),
    "video_id_a_bool": (with_item(video_id=True), "item 1: video_id True is not a video of the ground truth"),
    "category_id_a_string": (with_item(category_id="2"), "item 1 (video 2): category_id '2'; allowed: an integer"),
    "score_nan": (with_item(score=float("nan")),
                  "results.json: item 1 (video 2): score nan is not a finite number; allowed: a number"),
    "score_infinity": (with_item(score=float("inf")), "item 1 (video 2): score inf is not a finite number"),
    "score_a_string": (with_item(score="0.8"), "item 1 (video 2): score '0.8' is not a finite number"),
    "score_a_bool": (with_item(score=True), "item 1 (video 2): score True is not a finite number"),
    "score_beyond_float_range": (with_item(score=10**400), "item 1 (video 2): score 1000000"),
    "segmentations_an_object": (with_item(segmentations=B[0]), "item 1 (video 2): segmentations {'size': [20, 20], "
                                "'counts': 'l75?000...; allowed: a list with one segmentation per frame"),
    "segmentation_a_number": (with_frame(5), "item 1 (video 2) frame 0: segmentation 5; allowed: null, an RLE "
                                             "object {size: [h, w], counts: string or list of run lengths} or a list "
                                             "of polygons"),
    "rle_without_size": (with_frame({"counts": B[0]["counts"]}), "frame 0: an RLE object needs 'counts' and 'size'"),
    "rle_size_not_the_videos": (with_frame({**B[0], "size": [10, 20]}),
                                "item 1 (video 2) frame 0: RLE size [10, 20] is not the video's; allowed: [20, 20]"),
    "rle_counts_garbage": (with_frame({**B[0], "counts": "\x7f!!garbage"}),
                           "frame 0: undecodable RLE counts '\\x7f!!garbage': a character outside '0'..'o'; allowed: "
                           "a compressed RLE string whose runs cover the 400 pixels of the frame"),
    "rle_counts_cut_off": (with_frame({**B[0], "counts": B[0]["counts"] + "o"}), "the last value is cut off"),
    "rle_counts_with_runs_beyond_the_frame": (with_frame({**B[0], "counts": RUNS_BEYOND_THE_FRAME}),
                                              "a run below 0 or beyond the frame"),
    "rle_counts_a_number": (with_frame({**B[0], "counts": 5}), "frame 0: RLE counts 5; allowed: a compressed RLE "
                                                               "string or a list of run lengths >= 0"),
    "uncompressed_counts_of_the_wrong_sum": (with_frame({"size": [H, W], "counts": [1, 2, 3]}),
                                             "frame 0: RLE run lengths sum to 6; allowed: runs covering the 400 "
                                             "pixels of the frame"),
    "uncompressed_counts_negative": (with_frame({"size": [H, W], "counts": [-1, 401]}),
                                     "frame 0: RLE counts [-1, 401]"),
    "polygon_of_two_points": (with_frame([[1, 2, 3, 4]]), "frame 0: polygon [1, 2, 3, 4]; allowed: a list "
                              "[x1, y1, x2, y2, x3, y3, ...] of an even number (>= 6) of finite numbers"),
    "polygon_with_a_string": (with_frame([[1, 2, 3, "4", 5, 6]]), "frame 0: polygon [1, 2, 3, '4', 5, 6]; allowed"),
    "polygon_far_outside_the_frame": (with_frame([[0, 0, 1e9, 0, 0, 5]]), "frame 0: polygon [0, 0, 1000000000.0, 0, "
                                      "0, 5] reaches too far; allowed: x in [-20, 40], y in [-20, 40]"),
}


@pytest.mark.parametrize("name", REFUSED)
def test_refused_results(capsys, tmp_path, gt_file, name):
    edit, fragment = REFUSED[name]
    refused(capsys, gt_file, write(tmp_path / "results.json", edit(valid_results())), fragment)


def test_results_path_is_a_folder(capsys, tmp_path, gt_file):
    refused(capsys, gt_file, tmp_path, f"{tmp_path}: is a folder; allowed: a JSON file")


def test_results_file_missing(capsys, tmp_path, gt_file):
    refused(capsys, gt_file, tmp_path / "none.json", "none.json: results file not found")


def test_valid_results_score_100(capsys, tmp_path, gt_file):
    code, out, err = metrics(capsys, gt_file, write(tmp_path / "results.json", valid_results()))
    assert code == 0 and out["AP"] == pytest.approx(100.0) and out["mAP_segm"] == pytest.approx(100.0), err


def test_uncompressed_rle_and_polygon_results(capsys, tmp_path, gt_file):
    results = valid_results()
    results[0]["segmentations"] = [uncompressed(A[0]), [[3, 2, 8, 2, 8, 7, 3, 7]]]  # A[1]: the square at (3, 2)
    code, out, err = metrics(capsys, gt_file, write(tmp_path / "results.json", results))
    assert code == 0 and out["AP"] == pytest.approx(100.0), err


def test_null_empty_list_and_empty_object_are_absent_frames(capsys, tmp_path, gt_file):
    scores = []
    for absent in (None, [], {}):
        results = valid_results()
        results[0]["segmentations"] = [A[0], absent]
        code, out, err = metrics(capsys, gt_file, write(tmp_path / "results.json", results))
        assert code == 0, err
        scores.append(out)
    assert scores[0] == scores[1] == scores[2]
    # category 1: IoU 25 / 50, matched at the 0.5 threshold only -> AP 10; category 2: AP 100
    assert scores[0]["AP"] == pytest.approx((10 + 100) / 2)


def test_result_tracks_shorter_and_longer_than_the_video(capsys, tmp_path, gt_file, caplog):
    results = valid_results()
    results[0]["segmentations"] = A[:1]  # common frame 0 only: IoU 1 (ytvoseval zips the two tracks)
    results[1]["segmentations"] = [*B, rle(0, 0)]  # frame 2 lies beyond the video: left out
    code, out, err = metrics(capsys, gt_file, write(tmp_path / "results.json", results))
    assert code == 0 and out["AP"] == pytest.approx(100.0), err
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        f"{tmp_path / 'results.json'}: 1 track longer and 1 shorter than their video; each is scored on the "
        "frames it shares with its video, as ytvoseval does"]


def test_result_category_missing_from_the_ground_truth(capsys, tmp_path, gt_file, caplog):
    results = [*valid_results(), {"video_id": 1, "category_id": 5, "score": 0.99, "segmentations": B}]
    code, out, err = metrics(capsys, gt_file, write(tmp_path / "results.json", results))
    assert code == 0 and out["AP"] == pytest.approx(100.0), err
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        f"{tmp_path / 'results.json'}: 1 track of category_id 5, missing from the ground truth's categories; "
        "dropped, as ytvoseval does"]


def test_gt_annotation_with_id_0_is_matched(capsys, tmp_path):
    # ytvoseval stores the matched annotation's id and reads 0 as "no match": there the detection
    # of object 0 would count as a false positive (AP 50 here); prunebench renumbers the annotations
    gt = ground_truth()
    gt["annotations"][0]["id"] = 0
    code, out, err = metrics(capsys, write(tmp_path / "gt.json", gt), write(tmp_path / "results.json", valid_results()))
    assert code == 0 and out["AP"] == pytest.approx(100.0), err


def test_gt_annotation_of_a_category_missing_from_the_list(capsys, tmp_path, caplog):
    gt = ground_truth()
    gt["annotations"].append({"id": 3, "video_id": 1, "category_id": 9, "segmentations": B})
    code, out, err = metrics(capsys, write(tmp_path / "gt.json", gt), write(tmp_path / "results.json", valid_results()))
    assert code == 0 and out["AP"] == pytest.approx(100.0), err  # dropped, so not a missed object
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        f"{tmp_path / 'gt.json'}: 1 annotations of category_id 9, missing from the category list; dropped, as "
        "ytvoseval does"]


def test_gt_warning_is_held_back_when_the_results_are_refused(capsys, tmp_path, caplog):
    gt = ground_truth()
    gt["annotations"].append({"id": 3, "video_id": 1, "category_id": 9, "segmentations": B})
    results = with_item(score=float("nan"))(valid_results())
    refused(capsys, write(tmp_path / "gt.json", gt), write(tmp_path / "results.json", results), "score nan")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_gt_areas_field_sizes_the_objects(capsys, tmp_path):
    gt = ground_truth()
    gt["annotations"][0]["areas"] = [20000, None]  # "medium" by its own areas (its masks are 5x5)
    code, out, err = metrics(capsys, write(tmp_path / "gt.json", gt), write(tmp_path / "results.json", valid_results()))
    assert code == 0 and out["APm"] == pytest.approx(100.0) and out["APs"] == pytest.approx(100.0), err


GT_REFUSED = {
    "gt_video_length_disagrees_with_file_names": (
        lambda gt: gt["videos"][0].update(length=3),
        "gt.json: video 1: length 3 disagrees with its 2 file_names; allowed: length = the number of file_names"),
    "gt_areas_entry_a_string": (
        lambda gt: gt["annotations"][0].update(areas=[25, "x"]),
        "gt.json: annotation 1 (video 1): areas entry 'x'; allowed: a list of per-frame areas, numbers >= 0 or null"),
    "gt_rle_counts_garbage": (
        lambda gt: gt["annotations"][1].update(segmentations=[{**B[0], "counts": RUNS_BEYOND_THE_FRAME}, None]),
        "gt.json: annotation 2 (video 2) frame 0: undecodable RLE counts"),
    "gt_annotation_a_number": (
        lambda gt: gt["annotations"].append(5), "gt.json: annotation 5: needs an integer id; allowed: an object"),
    "gt_video_without_file_names": (
        lambda gt: gt["videos"][1].pop("file_names"),
        "gt.json: video 2: needs id, height, width and file_names; allowed: integers (height, width >= 1) and a "
        "list of file names"),
    "gt_annotation_id_a_string": (
        lambda gt: gt["annotations"][1].update(id="2"),
        "gt.json: annotation '2': needs an integer id; allowed: an object with an integer id"),
}


@pytest.mark.parametrize("name", GT_REFUSED)
def test_refused_ground_truth(capsys, tmp_path, name):
    edit, fragment = GT_REFUSED[name]
    gt = ground_truth()
    edit(gt)
    refused(capsys, write(tmp_path / "gt.json", gt), write(tmp_path / "results.json", valid_results()), fragment)
