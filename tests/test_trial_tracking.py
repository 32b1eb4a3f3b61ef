"""The driver-side MLflow writer of a sweep across a driver restart (real MLflow store, no Ray needed)."""

import json
from types import SimpleNamespace

from mlflow.tracking import MlflowClient

from prunebench.platform import trial_tracking
from prunebench.platform.trial_spec import GridTrials, TrialSpec
from prunebench.platform.trial_tracking import MLflowTrials, trial_run_key
from prunebench.platform.tracking import KEY_TAG, Tracker

EVALUATED = {"evaluated": True, "step": 4, "metrics": json.dumps({"AP": 0.31, "pkr": 0.5}), "convergence": "null"}
STOPPED = {"step": 2, "task_loss": 3.0}


def _callback(uri: str) -> MLflowTrials:
    tracker = Tracker(uri)
    experiment = tracker.experiment("sweep")
    parent = tracker.run(experiment, "study:sweep", name="sweep")
    describe = GridTrials((TrialSpec("a", "dynamicvit", {"keep": 0.5}, seed=0),))
    return MLflowTrials(uri, experiment, parent, "sweep", describe, {}, {})


def _trial(result: dict) -> SimpleNamespace:
    """What Tune hands its callbacks about a trial: id, config, last result, checkpoint."""
    return SimpleNamespace(trial_id="t1", config={"trial": "a"}, last_result=result, checkpoint=None)


def test_a_trial_started_again_by_a_new_driver_gets_a_fresh_run(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    callback, client = _callback(uri), MlflowClient(uri)
    # the first driver runs the trial to its evaluation, then dies before Tune records it as finished
    callback.on_trial_start(0, [], _trial({}))
    callback.on_trial_complete(0, [], _trial(EVALUATED))
    first = callback.tracker.find_run(callback.experiment_id, trial_run_key("sweep", "t1"))
    # within one driver a trial keeps its run
    callback.on_trial_start(0, [], _trial({}))
    assert callback.tracker.find_run(callback.experiment_id, trial_run_key("sweep", "t1")) == first
    # the restored sweep runs it again from scratch, and this time ASHA stops it
    monkeypatch.setattr(trial_tracking, "DRIVER_ID", "second-driver")
    callback.on_trial_start(0, [], _trial({}))
    callback.on_trial_complete(0, [], _trial(STOPPED))
    second = callback.tracker.find_run(callback.experiment_id, trial_run_key("sweep", "t1"))
    assert second != first
    old, new = client.get_run(first), client.get_run(second)
    assert old.data.tags["prunebench.kind"] == "abandoned"
    assert old.data.tags[KEY_TAG] == f"{trial_run_key('sweep', 't1')}:superseded:{first}"
    assert new.data.tags["prunebench.kind"] == "stopped" and "AP" not in new.data.metrics
    assert new.info.status == "FINISHED"


def test_a_running_earlier_attempt_ends_killed(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    callback, client = _callback(uri), MlflowClient(uri)
    callback.on_trial_start(0, [], _trial({}))  # the first driver dies while the trial trains
    first = callback.tracker.find_run(callback.experiment_id, trial_run_key("sweep", "t1"))
    monkeypatch.setattr(trial_tracking, "DRIVER_ID", "second-driver")
    assert callback.retire_earlier_attempt("t1") == first
    assert client.get_run(first).info.status == "KILLED"
    assert callback.retire_earlier_attempt("t1") is None  # nothing left to retire
