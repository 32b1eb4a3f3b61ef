"""GPU requests: trials and Train workers of a cuda config ask Ray for GPUs; flag and config never disagree.

The cluster is a real loopback Ray that declares logical GPUs (``ray start --num-gpus``); the model
itself runs on the CPU inside the workers (``PRUNEBENCH_FORCE_CPU=1``, for this test only).
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from platform_helpers import cli, free_port, stop_started
from prunebench.config import load_config
from prunebench.errors import ConfigError
from prunebench.platform.resources import gpus_per_trial

BIN = Path(sys.executable).parent


@pytest.mark.parametrize(("device", "requested", "expected"), [("cuda", None, 1.0), ("cpu", None, 0.0),
                                                                ("cuda", 0.5, 0.5), ("cpu", 0.0, 0.0)])
def test_gpus_per_trial_follow_the_config(device, requested, expected):
    assert gpus_per_trial(load_config("benchmark-tiny", {"device": device}), requested) == expected


@pytest.mark.parametrize(("device", "requested", "message"), [
    ("cuda", 0.0, "Ray would hide every GPU"), ("cpu", 1.0, "the GPUs would sit idle"), ("cuda", -1.0, "allowed: a number >= 0")])
def test_flag_and_config_cannot_disagree(device, requested, message):
    with pytest.raises(ConfigError, match=message):
        gpus_per_trial(load_config("benchmark-tiny", {"device": device}), requested)


@pytest.mark.slow
def test_trials_and_train_workers_are_granted_logical_gpus(tmp_path):
    temp_dir = Path(f"/tmp/rgpu{os.getpid()}")
    gcs = free_port()
    # the nodes' workers inherit the hook from the node's environment
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "RAY_AUTH_MODE": "token",
           "PRUNEBENCH_FORCE_CPU": "1"}
    before = {p.pid for p in psutil.process_iter()}
    try:
        subprocess.run([BIN / "ray", "start", "--head", f"--port={gcs}", "--num-cpus=2", "--num-gpus=1",
                        f"--temp-dir={temp_dir}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                        f"--dashboard-port={free_port()}", "--disable-usage-stats"],
                       check=True, env=env, capture_output=True, timeout=180)
        out = tmp_path / "out"
        # more GPUs per trial than the cluster declares: one line, before any MLflow run or output folder
        refused = cli(["benchmark", "benchmark-tiny", "--out", out, "--address", f"127.0.0.1:{gcs}",
                       "--set", "device=cuda", "--gpus-per-trial", "2"], check=False,
                      env={"RAY_AUTH_MODE": "token", "PRUNEBENCH_CACHE": str(tmp_path / "c")})
        lines = refused.stderr.strip().splitlines()
        assert refused.returncode == 2 and "Traceback" not in refused.stderr
        assert lines[-1].startswith("prunebench benchmark: error: the Ray cluster declares 1 GPU(s) but a trial")
        assert not out.exists()  # the cluster was asked before the synthetic data was generated
        result = cli(["benchmark", "benchmark-tiny", "--out", out, "--address", f"127.0.0.1:{gcs}", "--json",
                      "--set", "device=cuda", "--gpus-per-trial", "0.5", "--set", "benchmark.methods=[random]",
                      "--set", "benchmark.seeds=[0]"],
                     env={"RAY_AUTH_MODE": "token", "PRUNEBENCH_FORCE_CPU": "1", "PRUNEBENCH_CACHE": str(tmp_path / "c")})
        assert result["trials"] == 2
        client = MlflowClient(result["mlflow_tracking_uri"])
        runs = client.search_runs([result["mlflow_experiment_id"]], filter_string="tags.`prunebench.kind` = 'eval'")
        granted = [json.loads(r.data.tags["resources"]) for r in runs if r.data.tags["method"] == "random"]
        assert len(granted) == 2 and all(g.get("GPU") == 0.5 and g.get("CPU") == 1 for g in granted)
        train = client.search_runs([result["mlflow_experiment_id"]], filter_string="tags.`prunebench.kind` = 'train'")
        assert len(train) == 1 and train[0].info.status == "FINISHED"  # the dense stage ran with use_gpu
    finally:
        stop_started(str(temp_dir), before)
        time.sleep(1)
