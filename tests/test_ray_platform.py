"""Ray Train fault tolerance and the resumable Tune + Optuna study (real Ray, real MLflow)."""

import json

import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from platform_helpers import cli, kill_driver_when, write_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    root = tmp_path_factory.mktemp("platform")
    config = write_config(root)
    result = cli(["train", config, "--json"])
    return root, config, result


def test_train_reports_and_logs_to_mlflow(dense):
    root, _, result = dense
    client = MlflowClient(f"sqlite:///{root / 'runs' / 'mlflow.db'}")
    run = client.get_run(result["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.params["method"] == "dense"
    for key in ("train.lr", "seed", "code_version", "dataset_sha256", "hardware.cpus"):
        assert key in run.data.params, key
    # 8 single frames, batch 2: an epoch is 4 steps, so a 3-step stage reports once, at its end
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [3]
    assert result["epochs_reported"] == 1


def test_killed_train_worker_resumes_from_its_last_checkpoint_as_if_it_had_not_stopped(dense, tmp_path):
    root, config, result = dense
    marker = tmp_path / "killed"
    finetune = ["finetune", config, "--from", result["checkpoint"], "--set", "method.name=dynamicvit",
                "--set", "finetune.steps=12", "--json"]
    # 2 videos x 4 frames, batch 2: 4 steps per epoch -> checkpoints at steps 4, 8 and 12; killed after step 6.
    # Train V2's controller collects a report when it polls the workers (every 2 s by default); a worker killed
    # before that loses the report's checkpoint and its group starts over, so the test polls every 50 ms
    done = cli([*finetune, "--out", tmp_path / "ft.safetensors"], check=False,
               env={"PRUNEBENCH_FAULT_KILL_AT_STEP": "6", "PRUNEBENCH_FAULT_MARKER": str(marker),
                    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.05"})
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout)
    assert marker.read_text() == "killed"  # the worker really died
    assert "rank 0 resumes at step 4" in done.stderr  # ... and its successor started from the checkpoint
    client = MlflowClient(f"sqlite:///{root / 'runs' / 'mlflow.db'}")
    steps = [m.step for m in client.get_metric_history(out["mlflow_run_id"], "train_loss")]
    # every epoch's report, once (the run keeps its last 2 checkpoints, and their metrics are not the run's history)
    assert steps == [4, 8, 12] and out["epochs_reported"] == 3
    # the same clips, noise and updates after the restart as in a run that was never killed
    # (its own output folder: a Ray Train run of an existing name and storage resumes from that run's checkpoint)
    cli([*finetune, "--set", f"out={tmp_path / 'again'}", "--out", tmp_path / "uninterrupted.safetensors"])
    resumed, uninterrupted = load_file(tmp_path / "ft.safetensors"), load_file(tmp_path / "uninterrupted.safetensors")
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)


def _trial_runs(client, name):
    """Every trial's run of the study (evaluated, or stopped early by ASHA)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return []
    return client.search_runs([experiment.experiment_id], filter_string=f"tags.`prunebench.sweep` = '{name}'")


def test_study_resumes_after_its_driver_is_killed(dense):
    root, config, result = dense
    name = "resume-study"
    client = MlflowClient(f"sqlite:///{root / 'runs' / 'mlflow.db'}")
    kill_driver_when(["tune", "dynamicvit", "--config", config, "--from", result["checkpoint"], "--num-samples", "4",
                      "--name", name, "--set", "eval.threads=2", "--json"],
                     lambda: any(r.info.status == "FINISHED" for r in _trial_runs(client, name)))
    resumed = cli(["tune", "dynamicvit", "--config", config, "--from", result["checkpoint"], "--num-samples", "4",
                   "--name", name, "--set", "eval.threads=2", "--resume", "--json"])
    assert resumed["trials"] == 4
    runs = _trial_runs(client, name)
    # a trial the killed driver ran before Tune saved it is unknown to the restored study, whose searcher
    # draws it again: the first run is tagged abandoned (ended KILLED if it was running), never counted
    abandoned = [r for r in runs if r.data.tags["prunebench.kind"] == "abandoned"]
    assert all(r.info.status in ("KILLED", "FINISHED") for r in abandoned)
    children = [r for r in runs if r not in abandoned]
    trial_ids = [r.data.tags["trial_id"] for r in children]
    assert len(trial_ids) == len(set(trial_ids)) == resumed["trials"]  # no trial lost, none twice
    assert all(r.info.status == "FINISHED" for r in children)
    evaluated = [r for r in children if r.data.tags["prunebench.kind"] == "eval"]
    stopped = [r for r in children if r.data.tags["prunebench.kind"] == "stopped"]
    assert len(evaluated) == resumed["evaluated"] and len(evaluated) + len(stopped) == 4
    assert all(r.data.tags["stopped_early"] == "true" and "AP" not in r.data.metrics for r in stopped)
    # a trial evaluates on its own CPUs (1 each), not eval.threads: 2 threads each would oversubscribe
    assert all(r.data.metrics["threads"] == 1 for r in evaluated)
    assert resumed["best"] and all("AP" in b and "pkr" in b for b in resumed["best"])


def test_bad_study_arguments_exit_2(dense, tmp_path):
    root, config, result = dense
    done = cli(["tune", "dynamicvit", "--config", config, "--from", result["checkpoint"], "--objective", "fps"], check=False)
    assert done.returncode == 2 and done.stderr.strip().endswith("allowed: pkr, gmacs")
    space = tmp_path / "bad.yaml"
    space.write_text("method: vpp\nparams:\n  kappa: {uniform: [0.5, 1.5]}\n")
    done = cli(["tune", space, "--config", config, "--from", result["checkpoint"]], check=False)
    assert done.returncode == 2 and "kappa=1.5" in done.stderr and done.stderr.count("\n") == 1
    space.write_text("method: vpp\nparams:\n  kapa: {uniform: [0.5, 0.9]}\n")
    done = cli(["tune", space, "--config", config, "--from", result["checkpoint"]], check=False)
    assert done.returncode == 2 and "unknown parameter 'kapa'" in done.stderr
