"""Seeded random corruptions of a valid results file through the real ``prunebench metrics`` entry
point: every run ends within seconds in a score (the same on a second run) or in exit 2 with one
stderr line naming the file, never a traceback or a hang."""

import copy
import json
import random
import re
import time

import pytest

from prunebench.platform.cli import main
from test_metrics_inputs import H, W, ground_truth, write
from test_vis_metrics import A, B, uncompressed

SEED = 1729
CASES = 90
SECONDS = 5.0
#: values of the wrong type (or range) for a key or a frame
ODD_VALUES = ["x", "", None, [], {}, True, False, 1.5, -1, 0, 10**30, float("nan"), float("-inf"), [1, 2],
              {"a": 1}, [[1, 2, 3, 4, 5, 6]], {"size": [H, W], "counts": "0"}]


def base_results():
    """A valid results file using every segmentation form: compressed and uncompressed RLE, polygons, null."""
    return copy.deepcopy([
        {"video_id": 1, "category_id": 1, "score": 0.9, "segmentations": [A[0], uncompressed(A[1])]},
        {"video_id": 2, "category_id": 2, "score": 0.8, "segmentations": [[[12, 12, 17, 12, 17, 17, 12, 17]], B[1]]},
        {"video_id": 1, "category_id": 2, "score": 0.3, "segmentations": [None, B[0]]}])


def text(results):
    return json.dumps(results).encode()


def truncate(rng, results):
    data = text(results)
    return data[:rng.randrange(len(data))]


def flip_in_counts(rng, results):
    data = bytearray(text(results))
    spans = [m.span(1) for m in re.finditer(rb'"counts": "([^"]+)"', data)]
    start, end = rng.choice(spans)
    data[rng.randrange(start, end)] = rng.randrange(32, 127)  # printable: the RLE decoder sees it
    return bytes(data)


def flip_anywhere(rng, results):
    data = bytearray(text(results))
    data[rng.randrange(len(data))] = rng.randrange(256)
    return bytes(data)


def wrong_size(rng, results):
    track = rng.choice(results[:2])
    frame = next(s for s in track["segmentations"] if isinstance(s, dict))
    frame["size"] = rng.choice([[H, W + 1], [H - 1, W], [W * 2, H], [0, 0], [H], [str(H), W]])
    return text(results)


def wrong_type(rng, results):
    rng.choice(results)[rng.choice(["score", "video_id", "category_id", "segmentations"])] = rng.choice(ODD_VALUES)
    return text(results)


def odd_frame(rng, results):
    rng.choice(results)["segmentations"][rng.randrange(2)] = rng.choice(ODD_VALUES)
    return text(results)


def bad_score(rng, results):
    rng.choice(results)["score"] = rng.choice([float("nan"), float("inf"), float("-inf"), "0.5", True, None])
    return text(results)


def extra_key(rng, results):
    rng.choice(results)[rng.choice(["id", "areas", "bboxes", "note", "iscrowd"])] = rng.choice(ODD_VALUES)
    return text(results)


def missing_key(rng, results):
    del rng.choice(results)[rng.choice(["score", "video_id", "category_id", "segmentations"])]
    return text(results)


#: each corruption and the outcome it must have: "score", "error" or "either"
CORRUPTIONS = [(truncate, "error"), (flip_in_counts, "either"), (flip_anywhere, "either"), (wrong_size, "error"),
               (wrong_type, "either"), (odd_frame, "either"), (bad_score, "error"), (extra_key, "score"),
               (missing_key, "error")]


def run(capsys, gt, results):
    start = time.perf_counter()
    code = main(["metrics", str(gt), str(results), "--json"])
    assert time.perf_counter() - start < SECONDS
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err, captured.err
    return code, captured.out, captured.err


@pytest.mark.parametrize("case", range(CASES))
def test_corrupted_results_give_a_score_or_one_line(capsys, tmp_path, case):
    rng = random.Random(SEED + case)
    corrupt, expected = CORRUPTIONS[case % len(CORRUPTIONS)]
    gt = write(tmp_path / "gt.json", ground_truth())
    results = write(tmp_path / "results.json", corrupt(rng, base_results()))
    code, out, err = run(capsys, gt, results)
    assert code in {"score": (0,), "error": (2,), "either": (0, 2)}[expected], (corrupt.__name__, err)
    if code == 0:
        assert json.loads(out)["AP"] is not None
        assert run(capsys, gt, results)[1] == out  # the same score again
    else:
        assert out == "" and err.count("\n") == 1, err
        assert err.startswith(f"prunebench metrics: error: {results}: "), err
