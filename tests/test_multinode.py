"""A real 2-node Ray cluster on 127.0.0.1: `ray start` twice, `ray job submit` a sweep, check MLflow.

Only the processes this test started are stopped (matched by its own Ray temp dir and ports), never
with the machine-wide `ray stop`.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from platform_helpers import cli, free_port, stop_started, write_config

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def test_sweep_submitted_to_a_two_node_cluster(tmp_path):
    root = tmp_path / "mn"
    root.mkdir()
    config = write_config(root, eval={"threads": 1, "timing_frames": 2, "warmup_frames": 1})
    dense = cli(["train", config, "--json"])  # the dense checkpoint, on a local Ray of its own
    temp_dir = Path("/tmp") / f"rmn{os.getpid()}"
    gcs, dashboard = free_port(), free_port()
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "RAY_AUTH_MODE": "token"}
    before = {p.pid for p in psutil.process_iter()}
    try:
        subprocess.run([BIN / "ray", "start", "--head", f"--port={gcs}", "--num-cpus=1", f"--temp-dir={temp_dir}",
                        "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--include-dashboard=true",
                        "--disable-usage-stats"], check=True, env=env, capture_output=True, timeout=180)
        subprocess.run([BIN / "ray", "start", f"--address=127.0.0.1:{gcs}", "--num-cpus=1", "--disable-usage-stats"],
                       check=True, env=env, capture_output=True, timeout=180)
        tracking = f"sqlite:///{root / 'runs' / 'mlflow.db'}"
        # the project is installed, so nothing is uploaded (both "nodes" share one machine and one
        # session dir, where an uploaded working dir can be collected under the running driver);
        # the job finds its cluster through RAY_ADDRESS, which Ray sets for job entrypoints
        entry = (f"cd {root} && {sys.executable} -m prunebench.platform.cli tune dynamicvit --config {config} "
                 f"--from {dense['checkpoint']} --num-samples 2 --name multinode "
                 f"--tracking-uri {tracking} --json")
        submitted = subprocess.run([BIN / "ray", "job", "submit", "--address", f"http://127.0.0.1:{dashboard}",
                                    "--", "bash", "-c", entry],
                                   env=env, capture_output=True, text=True, timeout=900)
        assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-2000:]
        assert "succeeded" in submitted.stdout.lower()
        client = MlflowClient(tracking)
        experiment = client.get_experiment_by_name("multinode")
        parent = client.search_runs([experiment.experiment_id], filter_string="tags.`prunebench.kind` = 'study'")
        # every trial's run, evaluated or stopped early by ASHA (kind "stopped")
        children = client.search_runs([experiment.experiment_id], filter_string="tags.`prunebench.sweep` = 'multinode'")
        assert len(parent) == 1 and len(children) == 2
        assert all(c.data.tags["mlflow.parentRunId"] == parent[0].info.run_id for c in children)
        assert len({c.data.tags["node_id"] for c in children}) == 2  # one trial on each node
    finally:
        stop_started(str(temp_dir), before)
        time.sleep(1)
