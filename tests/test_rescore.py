"""``prunebench rescore``: the logged predictions of evaluation runs scored again, on a real SQLite MLflow store.

The store's runs are written as an evaluation writes them (``prunebench.kind = eval``, the valid split's hash,
``results.json`` as an artifact) but with the per-video AP of the bug fixed in the evaluator: every video carrying
the first video's AP. The command must put each video's own AP on the run, keep the old value in the metric
history, leave the headline scores as they were, and write nothing when any input is bad.
"""

import json
import math
from pathlib import Path

import pytest

from platform_helpers import TINY, cli, write_config
from prunebench.data.synth import SynthSpec, generate
from prunebench.data.ytvis import YTVISDataset
from prunebench.evaluation.vis_metrics import score_results
from prunebench.platform.rescore import RESCORED_TAG, new_scores
from prunebench.platform.tracking import Tracker, numeric_metrics, resolve_tracking_uri
from prunebench.reports.leaderboard import fetch_runs

VIDEOS = 3


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rescore-data") / "data"
    generate(root, SynthSpec(**{**TINY["data"]["synth"], "valid_videos": VIDEOS}), workers=1)
    return root


def _predictions(gt: dict, video: int) -> list[dict]:
    """Every ground-truth track of ``video`` as a confident prediction; nothing for the other videos."""
    return [{"video_id": a["video_id"], "category_id": a["category_id"], "score": 0.9,
             "segmentations": a["segmentations"]} for a in gt["annotations"] if a["video_id"] == video]


def _log_stale_run(tracker: Tracker, experiment: str, dataset: str, results: object | None, correct: dict, seed: int,
                   **wrong: float) -> str:
    """An evaluation run as the trials log it, with the bug's per-video AP (the first video's, for every video),
    ``wrong`` headline scores on top, and ``results`` as its ``results.json`` (None: no predictions logged)."""
    run = tracker.run(experiment, f"trial:{seed}", name=f"vpp-{seed}",
                      tags={"prunebench.kind": "eval", "dataset": dataset, "method": "vpp", "setting": "0.50",
                            "seed": str(seed), "backbone": "vit_tiny"})
    first = next(iter(correct["per_video_AP"].values()))
    stale = {**correct, "per_video_AP": {v: first for v in correct["per_video_AP"]}, **wrong}
    tracker.log_metrics(run, numeric_metrics(stale))
    if results is not None:
        tracker.log_dict(run, results, "results.json")
    tracker.end(run)
    return run


@pytest.fixture
def store(data, tmp_path):
    """A config over ``data`` whose out folder holds an MLflow store with one stale evaluation run."""
    config = write_config(tmp_path, data={"root": str(data)})
    valid = YTVISDataset(data, "valid")
    gt = valid.ground_truth()
    first = gt["videos"][0]["id"]
    results = _predictions(gt, first)
    correct = score_results(gt, results, per_video=True)
    uri = resolve_tracking_uri(None, tmp_path / "runs")
    tracker = Tracker(uri)
    experiment = tracker.experiment("tiny")
    run = _log_stale_run(tracker, experiment, valid.sha256, results, correct, seed=0)
    return config, tracker, experiment, run, correct, valid


def test_rescore_puts_each_videos_own_ap_on_the_run_and_keeps_the_history(store):
    config, tracker, _, run, correct, _ = store
    assert len(set(correct["per_video_AP"].values())) == 2  # the first video 100, the others 0
    out = cli(["rescore", config, "--json"])
    [line] = out["rescored"]
    assert line["run_id"] == run and line["changed"] == {}  # headline scores: as logged
    assert line["per_video_changed"] == VIDEOS - 1
    logged = tracker.client.get_run(run).data
    assert {k: logged.metrics[f"per_video_AP_{k}"] for k in correct["per_video_AP"]} == correct["per_video_AP"]
    assert logged.tags[RESCORED_TAG] == out["code_version"]
    second = list(correct["per_video_AP"])[1]
    history = [m.value for m in tracker.client.get_metric_history(run, f"per_video_AP_{second}")]
    assert history == pytest.approx([100.0, 0.0])  # the old value stays in the history; the current one is the new
    [row] = fetch_runs(tracker.uri, "tiny")
    assert row.per_video == correct["per_video_AP"]
    again = cli(["rescore", config, "--json"])  # a second rescore finds nothing to change
    assert again["rescored"][0]["per_video_changed"] == 0 and again["rescored"][0]["changed"] == {}


def test_rescore_refuses_malformed_predictions_before_writing_anything(store):
    config, tracker, experiment, run, correct, valid = store
    broken = [{"video_id": valid.videos[0].id, "category_id": 1, "score": "high", "segmentations": []}]
    bad = _log_stale_run(tracker, experiment, valid.sha256, broken, correct, seed=1)
    later = _log_stale_run(tracker, experiment, valid.sha256, _predictions(valid.ground_truth(), valid.videos[0].id),
                           correct, seed=2)  # scored before the broken one (newest first): still not written
    runs = (run, bad, later)
    before = {r: tracker.client.get_run(r).data.metrics for r in runs}
    done = cli(["rescore", config, "--json"], check=False)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1 and f"run {bad} results.json" in done.stderr, done.stderr
    assert {r: tracker.client.get_run(r).data.metrics for r in runs} == before
    assert not any(RESCORED_TAG in tracker.client.get_run(r).data.tags for r in runs)


def test_rescore_names_changed_headline_scores_and_leaves_other_runs_alone(store):
    config, tracker, experiment, run, correct, valid = store
    assert correct["APl"] is None  # tiny frames: no large object
    wrong = _log_stale_run(tracker, experiment, valid.sha256, _predictions(valid.ground_truth(), valid.videos[0].id),
                           correct, seed=1, AP=correct["AP"] - 5.0, APl=12.5)
    unscored = _log_stale_run(tracker, experiment, valid.sha256, None, correct, seed=2)
    elsewhere = _log_stale_run(tracker, experiment, "another-dataset", [], correct, seed=3)
    before = {r: tracker.client.get_run(r).data.metrics for r in (unscored, elsewhere)}
    done = cli(["rescore", config, "--json"], check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout)  # valid JSON: the score that became undefined is null, not NaN
    lines = {line["run_id"]: line for line in out["rescored"]}
    assert set(lines) == {run, wrong}
    assert lines[wrong]["changed"] == {"AP": [pytest.approx(correct["AP"] - 5.0), pytest.approx(correct["AP"])],
                                       "APl": [12.5, None]}
    assert lines[run]["changed"] == {}
    assert out["without_results"] == [unscored] and out["other_datasets"] == 1
    assert f"1 runs without results.json left as logged: {unscored}" in done.stderr
    assert {r: tracker.client.get_run(r).data.metrics for r in (unscored, elsewhere)} == before
    [row] = [r for r in fetch_runs(tracker.uri, "tiny") if r.run_id == wrong]
    assert row.metrics["AP"] == pytest.approx(correct["AP"]) and "APl" not in row.metrics  # NaN: missing


def test_rescore_refuses_runs_whose_predictions_it_cannot_see(store):
    config, tracker, experiment, run, correct, valid = store
    tracker.client.delete_run(run)
    _log_stale_run(tracker, experiment, valid.sha256, None, correct, seed=1)
    done = cli(["rescore", config], check=False)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "none of its 1 evaluation runs of this valid split lists results.json" in done.stderr, done.stderr


def test_rescore_refuses_other_data_and_unknown_experiments(store, tmp_path):
    config, tracker, _, run, _, _ = store
    other = tmp_path / "other"
    generate(other, SynthSpec(**{**TINY["data"]["synth"], "seed": 7}), workers=1)
    before = tracker.client.get_run(run).data.metrics
    for args, says in ((["--set", f"data.root={other}"], "no evaluation run of the valid split"),
                       (["--experiment", "tinyy"], "no such MLflow experiment; found: Default, tiny")):
        done = cli(["rescore", config, *args], check=False)
        assert done.returncode == 2 and done.stderr.count("\n") == 1 and says in done.stderr, done.stderr
    assert tracker.client.get_run(run).data.metrics == before


def test_new_scores_mark_what_became_undefined_as_nan(tmp_path):
    logged = {"AP": 20.0, "APs": 10.0, "per_video_AP_3": 50.0, "pkr": 0.5}
    scores = {"AP": 21.0, "APs": None, "APl": None, "per_video_AP": {"3": None, "4": 70.0}}
    numbers = new_scores(logged, scores)
    assert set(numbers) == {"AP", "APs", "per_video_AP_3", "per_video_AP_4"}  # APl was never logged; pkr is the model's
    assert numbers["AP"] == 21.0 and numbers["per_video_AP_4"] == 70.0
    assert math.isnan(numbers["APs"]) and math.isnan(numbers["per_video_AP_3"])
    tracker = Tracker(resolve_tracking_uri(None, tmp_path))
    run = tracker.run(tracker.experiment("x"), "k", name="r", tags={"prunebench.kind": "eval"})
    tracker.log_metrics(run, numbers)
    tracker.end(run)
    [row] = fetch_runs(tracker.uri, "x")
    assert row.per_video == {"4": 70.0}  # NaN: undefined, left out of the paired test
