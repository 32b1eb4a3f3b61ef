"""The MLflow layout an MLflow user expects: source tags, eval runs keyed by what determines them, the
checkpoint's training run, report runs, the code version of a submitted job, and ``--from`` URIs."""

import json
import logging

import pytest
import torch
from mlflow.tracking import MlflowClient

from platform_helpers import cli, write_config
from prunebench.config import load_config
from prunebench.errors import ConfigError
from prunebench.platform.cli import main
from prunebench.platform.ray_train import LOG_LEVEL_ENV, worker_env
from prunebench.platform.preflight import fetch_checkpoint
from prunebench.platform.runs import report_logged
from prunebench.platform.tracking import Tracker, resolve_tracking_uri, source_tags
from prunebench.reports.leaderboard import fetch_runs
from prunebench.training.checkpoint import CODE_VERSION_ENV, code_commit, code_version, read_meta, save_checkpoint
from prunebench.training.protocol import prepare_stage


def test_code_version_env_overrides_git_and_reaches_ray_workers(monkeypatch):
    monkeypatch.setenv(CODE_VERSION_ENV, "v0.3-2-gabc1234-dirty")
    assert code_version() == "v0.3-2-gabc1234-dirty" and code_commit() == "abc1234"
    level = logging.getLevelName(logging.getLogger("prunebench").getEffectiveLevel())  # the driver's, handed on
    assert worker_env() == {"env_vars": {CODE_VERSION_ENV: "v0.3-2-gabc1234-dirty", LOG_LEVEL_ENV: level}}
    monkeypatch.setenv(CODE_VERSION_ENV, "0.1.0+gdeadbee.dirty")  # a driver's code_version() handed to workers
    assert code_commit() == "deadbee"
    job = {"runtime_env": {"env_vars": {CODE_VERSION_ENV: "abc1234"}}}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(job))  # a submitted job that already sets it
    assert worker_env() == {"env_vars": {LOG_LEVEL_ENV: level}}
    monkeypatch.delenv(CODE_VERSION_ENV)
    assert code_version() != "0.1.0+gdeadbee.dirty"


def test_runs_carry_mlflow_source_tags(tmp_path, monkeypatch):
    tracker = Tracker(resolve_tracking_uri(None, tmp_path))
    experiment = tracker.experiment("tags")
    local = tracker.client.get_run(tracker.run(experiment, "a", name="a")).data.tags
    assert local["mlflow.source.type"] == "LOCAL" and local["mlflow.user"] and local["mlflow.source.name"]
    monkeypatch.setenv(CODE_VERSION_ENV, "abc1234")
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")
    job = tracker.client.get_run(tracker.run(experiment, "b", name="b")).data.tags
    assert job["mlflow.source.type"] == "JOB" and job["mlflow.source.git.commit"] == "abc1234"
    assert source_tags()["mlflow.source.name"] == local["mlflow.source.name"]


def _checkpoint(config_path, target, meta=None):
    """An untrained dense checkpoint of the tiny config (no Ray), with extra metadata."""
    prepared = prepare_stage(load_config(config_path), "train")
    return save_checkpoint(target, prepared.model, {**prepared.meta, **(meta or {})})


def _eval_runs(capsys, config, checkpoint, *overrides):
    code = main(["eval", str(config), "--checkpoint", str(checkpoint), "--no-timing", "--json",
                 *[a for o in overrides for a in ("--set", o)]])
    assert code == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)["mlflow_run_id"]


def test_eval_runs_are_keyed_by_checkpoint_data_and_settings(tmp_path, capsys):
    config = write_config(tmp_path)
    checkpoint = _checkpoint(config, tmp_path / "dense.safetensors", {"mlflow_run_id": "trainrun0"})
    first = _eval_runs(capsys, config, checkpoint)
    assert _eval_runs(capsys, config, checkpoint) == first  # identical params: the same run
    other_data = _eval_runs(capsys, config, checkpoint, f"data.root={tmp_path / 'data2'}", "data.synth.seed=1")
    assert other_data != first
    tracker = Tracker(resolve_tracking_uri(None, tmp_path / "runs"))
    runs = tracker.client.search_runs([tracker.experiment("tiny")])
    assert len(runs) == 2 and {r.data.params["dataset_sha256"] for r in runs} == {
        r.data.tags["dataset"] for r in runs}
    run = tracker.client.get_run(first)
    assert run.data.tags["prunebench.train_run"] == "trainrun0" and len(run.data.params["checkpoint_sha256"]) == 64


def test_report_is_logged_on_a_report_run_no_leaderboard_reads(tmp_path):
    uri = resolve_tracking_uri(None, tmp_path)
    tracker = Tracker(uri)
    experiment = tracker.experiment("known")
    for method, pkr, ap in (("dense", 1.0, 40.0), ("vpp", 0.6, 35.0), ("vpp", 0.35, 30.0)):
        run = tracker.run(experiment, f"{method}-{pkr}", name=method, tags={
            "prunebench.kind": "eval", "method": method, "backbone": "vit_tiny", "dataset": "d", "seed": "0",
            **({} if method == "dense" else {"setting": f"{pkr:.2f}"})})
        tracker.log_params(run, {"seed": "0", "eval.seed": "0", "method": method})
        tracker.log_metrics(run, {"AP": ap, "pkr": pkr, "gmacs": pkr, "gmacs_dense": 1.0, "fps_model": 1.0})
        tracker.end(run)
    result = report_logged(uri, tmp_path / "report", "known", (0.55,))
    assert report_logged(uri, tmp_path / "report", "known", (0.55,))["mlflow_run_id"] == result["mlflow_run_id"]
    run = tracker.client.get_run(result["mlflow_run_id"])
    assert run.info.experiment_id == experiment and run.data.tags["prunebench.kind"] == "report"
    logged = {a.path for a in tracker.client.list_artifacts(run.info.run_id, "report")}
    assert "report/report.html" in logged and "report/leaderboard.md" in logged
    assert len(fetch_runs(uri, "known")) == 3


def test_from_takes_a_path_or_a_runs_uri_checked_before_anything_starts(tmp_path, capsys):
    config_path = write_config(tmp_path)
    config = load_config(config_path)
    dense = save_checkpoint(tmp_path / "dense.safetensors", torch.nn.Linear(2, 2),
                            {"config": {"model": {"backbone": "vit_tiny"}}, "method": "dense"})
    uri = resolve_tracking_uri(None, config.out)
    assert fetch_checkpoint(str(dense), config, uri) == dense
    tracker = Tracker(uri)
    run = tracker.run(tracker.experiment("tiny"), "train:x", name="train-dense")
    tracker.log_file_as(run, dense, "checkpoint/model.safetensors")
    source = f"runs:/{run}/checkpoint/model.safetensors"
    fetched = fetch_checkpoint(source, config, uri)
    assert fetched.name == "model.safetensors" and fetched.parent.parent == tmp_path / "runs" / "inputs"
    assert fetch_checkpoint(source, config, uri) == fetched and len(list(fetched.parent.parent.iterdir())) == 1
    small = load_config(config_path, {"model.backbone": "vit_small"})
    bad = [(source, small, "backbone vit_tiny"), (str(tmp_path / "none.safetensors"), config, "no such file"),
           (f"runs:/{run}/checkpoint/missing.safetensors", config, "cannot download"),
           ("http://x/y", config, "unsupported URI"), (str(config_path), config, "not a safetensors")]
    for source_, config_, message in bad:
        with pytest.raises(ConfigError, match=message):
            fetch_checkpoint(source_, config_, uri)
    assert main(["finetune", str(config_path), "--from", "runs:/nope/model.safetensors", "--set", "method.name=tps"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("prunebench finetune: error: --from runs:/nope/model.safetensors: cannot download")


@pytest.mark.slow
def test_training_run_logs_its_checkpoint_which_finetune_takes_by_runs_uri(tmp_path):
    config = write_config(tmp_path)
    trained = cli(["train", config, "--json"], env={CODE_VERSION_ENV: "abc1234-dirty"})
    meta = read_meta(trained["checkpoint"])
    assert meta["mlflow_run_id"] == trained["mlflow_run_id"] and meta["code_version"] == "abc1234-dirty"
    client = MlflowClient(resolve_tracking_uri(None, tmp_path / "runs"))
    tags = client.get_run(trained["mlflow_run_id"]).data.tags
    assert tags["mlflow.source.name"] == "prunebench train" and tags["mlflow.source.git.commit"] == "abc1234"
    assert [a.path for a in client.list_artifacts(trained["mlflow_run_id"], "checkpoint")] == [
        "checkpoint/model.safetensors"]
    source = f"runs:/{trained['mlflow_run_id']}/checkpoint/model.safetensors"
    tuned = cli(["finetune", config, "--from", source, "--set", "method.name=dynamicvit", "--json"])
    assert read_meta(tuned["checkpoint"])["init_checkpoint"].startswith(str(tmp_path / "runs" / "inputs"))
    evaluated = cli(["eval", config, "--checkpoint", tuned["checkpoint"], "--set", "method.name=dynamicvit",
                     "--no-timing", "--json"])
    assert client.get_run(evaluated["mlflow_run_id"]).data.tags["prunebench.train_run"] == tuned["mlflow_run_id"]
