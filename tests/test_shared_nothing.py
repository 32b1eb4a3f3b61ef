"""Two Ray nodes that share nothing but the services: a sweep's results reach MLflow and S3, never a node's disk.

On 127.0.0.1 the test starts an S3 API server (``moto_server``), an ``mlflow server`` whose artifacts go
to that S3 (``--artifacts-destination s3://...``, served to clients through the server) and two Ray
nodes. Each node has folders of its own: ``ray/`` (``ray start --temp-dir``: its session, sockets,
logs, the unpacked job package, Tune's trial folders) and ``home/`` (its ``HOME``, ``TMPDIR`` parent and
working folder). What the nodes do share, on one machine: the Python environment (a cluster's machine
image), the dataset folder (a mount every node has, ``cluster.yaml``'s ``file_mounts``), and
the services (Ray's GCS, S3, MLflow). The S3 credentials and endpoint are in the nodes' and the MLflow
server's environment only (an instance profile on a cluster); the client (this test, ``train``,
``eval``, ``report``) reaches artifacts through the MLflow server alone.

The client trains the dense model and evaluates it (its checkpoint is logged to MLflow), then submits a
2-trial study with ``ray job submit --working-dir`` (a copy of the project with the job's config) and
``--from runs:/...``, ``--storage-path s3://...``, ``--tracking-uri http://...``. It checks that the trials
ran on both nodes and that every trial's run has its metrics and its artifacts downloadable from the
server; then it stops both nodes, removes their folders (the unpacked job package with them; the
uploaded one lived in the head's GCS) and the project copy, and builds the report in a fresh folder.
Only the processes this test started are stopped.
"""

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import boto3
import pytest
from mlflow.tracking import MlflowClient

from platform_helpers import cli, free_port, stop_tagged, write_config
from prunebench.training.checkpoint import read_meta

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
BUCKET = "prunebench"
STUDY = "shared-nothing"
CODE_VERSION = "shared-nothing-test"
S3_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
EVAL = {"threads": 1, "timing_frames": 2, "warmup_frames": 1}
BUDGET = 900  # seconds for the whole test (about 3 minutes on an idle 2-core machine)
#: what the nodes and servers do not inherit from the test (nor AWS_*: they get S3 settings of their own)
PRIVATE = ("RAY_ADDRESS", "PYTHONPATH", "MLFLOW_TRACKING_URI", "PRUNEBENCH_CACHE")


@dataclass(frozen=True)
class Node:
    """A Ray node's own folders, under ``root`` (short: Ray's socket paths must stay below 108 bytes)."""

    root: Path

    @property
    def ray(self) -> Path:
        """``ray start --temp-dir``."""
        return self.root / "ray"

    @property
    def home(self) -> Path:
        """The node's ``HOME`` and working folder (``TMPDIR`` is ``home/tmp``)."""
        return self.root / "home"

    def env(self, shared: dict[str, str]) -> dict[str, str]:
        """The environment of ``ray start`` (inherited by the node's raylet, workers and job drivers)."""
        (self.home / "tmp").mkdir(parents=True, exist_ok=True)
        return {**shared, "HOME": str(self.home), "TMPDIR": str(self.home / "tmp")}


class Deadline:
    """One time budget for the whole test: each step gets what is left of it."""

    def __init__(self, seconds: float):
        self.start = time.monotonic()
        self.end = self.start + seconds

    def left(self) -> float:
        """Seconds left (at least 1, so a late step still fails by its own timeout)."""
        return max(1.0, self.end - time.monotonic())

    def wait_until(self, ready: Callable[[], bool], what: str) -> None:
        """Poll ``ready()`` (exceptions count as not ready) until it is true; fail naming ``what`` when time is up."""
        while time.monotonic() < self.end:
            try:
                if ready():
                    return
            except Exception:  # a server that is not up yet refuses in its own way
                pass
            time.sleep(1)
        pytest.fail(f"{what} not ready within the test's {BUDGET} s")

    def run(self, args: list, log: Path, **popen) -> str:
        """Run a command, its output in ``log``; return its output, or fail with the log's tail unless it exits 0
        in the time left."""
        with log.open("wb") as out:
            try:
                done = subprocess.run(args, stdout=out, stderr=subprocess.STDOUT, timeout=self.left(), **popen)
                code = done.returncode
            except subprocess.TimeoutExpired:
                code = None
        text = log.read_text(errors="replace")
        if code != 0:
            outcome = "timed out" if code is None else f"exit {code}"
            pytest.fail(f"{' '.join(map(str, args[:3]))}: {outcome}\n{text[-6000:]}")
        return text


def serve(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    """Start a server in its own session, its output in ``log``."""
    with log.open("wb") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def healthy(url: str) -> bool:
    """The MLflow server answers its health check."""
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status == 200


def ray_start(args: list[str], node: Node, env: dict[str, str], deadline: Deadline) -> None:
    """``ray start ARGS`` for ``node``: its own temp folder, working folder and environment, one CPU."""
    deadline.run([BIN / "ray", "start", f"--temp-dir={node.ray}", f"--node-ip-address={HOST}", "--num-cpus=1",
                  "--num-gpus=0", f"--dashboard-agent-listen-port={free_port()}", "--disable-usage-stats", *args],
                 node.root / "start.log", cwd=node.home, env=node.env(env))


def project_copy(folder: Path, data: Path) -> Path:
    """What the job uploads: the package, pyproject.toml and the job's config (a relative ``out``: the job's folder
    on the head; ``data.root``: the dataset mount)."""
    shutil.copytree(ROOT / "prunebench", folder / "prunebench", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", folder)
    write_config(folder, out="runs", data={"root": str(data)}, eval=EVAL)
    return folder


def test_sweep_on_nodes_that_share_nothing_but_the_services(tmp_path):
    deadline = Deadline(BUDGET)
    nodes_root = Path(tempfile.mkdtemp(prefix="rsn", dir="/tmp"))
    head, worker = Node(nodes_root / "h"), Node(nodes_root / "w")
    data = tmp_path / "data"  # the dataset mount of every node
    s3_port, mlflow_port, gcs, dashboard = free_port(), free_port(), free_port(), free_port()
    s3_url, uri = f"http://{HOST}:{s3_port}", f"http://{HOST}:{mlflow_port}"
    base = {k: v for k, v in os.environ.items() if k not in PRIVATE and not k.startswith("AWS_")}
    token = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    s3_env = {**S3_KEYS, "AWS_ENDPOINT_URL": s3_url, "MLFLOW_S3_ENDPOINT_URL": s3_url}
    node_env = {**base, **token, **s3_env}
    client = {"PYTHONPATH": str(ROOT), **token}  # the client has no S3 credentials
    servers: list[subprocess.Popen] = []
    try:
        servers.append(serve([str(BIN / "moto_server"), "-H", HOST, "-p", str(s3_port)], tmp_path / "s3.log", base))
        (tmp_path / "mlflow").mkdir()
        servers.append(serve([str(BIN / "mlflow"), "server", "--backend-store-uri",
                              f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}", "--artifacts-destination",
                              f"s3://{BUCKET}/mlflow", "--host", HOST, "--port", str(mlflow_port), "--workers", "1"],
                             tmp_path / "mlflow.log", {**base, **s3_env}))
        s3 = boto3.client("s3", endpoint_url=s3_url, region_name=S3_KEYS["AWS_DEFAULT_REGION"],
                          aws_access_key_id=S3_KEYS["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=S3_KEYS["AWS_SECRET_ACCESS_KEY"])
        deadline.wait_until(lambda: s3.create_bucket(Bucket=BUCKET) is not None, "moto_server")
        ray_start(["--head", f"--port={gcs}", f"--dashboard-host={HOST}", f"--dashboard-port={dashboard}",
                   "--include-dashboard=true", f"--ray-client-server-port={free_port()}"], head, node_env, deadline)
        ray_start([f"--address={HOST}:{gcs}"], worker, node_env, deadline)
        deadline.wait_until(lambda: healthy(f"{uri}/health"), "mlflow server")

        # the client: the dense model (its training run logs the checkpoint) and its evaluation (the baseline)
        (tmp_path / "client").mkdir()
        config = write_config(tmp_path / "client", data={"root": str(data)}, eval=EVAL)
        dense = cli(["train", config, "--tracking-uri", uri, "--json"], env=client, timeout=deadline.left())
        cli(["eval", config, "--checkpoint", dense["checkpoint"], "--no-timing", "--tracking-uri", uri, "--json"],
            env=client, timeout=deadline.left())

        # the study, submitted with the project as the job's working dir
        project = project_copy(tmp_path / "project", data)
        entry = [sys.executable, "-m", "prunebench.platform.cli", "tune", "dynamicvit", "--config", "tiny.yaml",
                 "--from", f"runs:/{dense['mlflow_run_id']}/checkpoint/model.safetensors", "--num-samples", "2",
                 "--reports", "1", "--name", STUDY, "--tracking-uri", uri, "--storage-path", f"s3://{BUCKET}/ray",
                 "--json"]
        job = deadline.run([BIN / "ray", "job", "submit", "--address", f"http://{HOST}:{dashboard}",
                            "--working-dir", project, "--runtime-env-json",
                            json.dumps({"env_vars": {"PRUNEBENCH_CODE_VERSION": CODE_VERSION}}), "--", *entry],
                           tmp_path / "job.log", env={**base, **client})
        assert "succeeded" in job.lower(), job[-4000:]

        # every trial's run, from the server: metrics, tags, and its artifacts downloaded into a fresh folder
        mlflow = MlflowClient(uri)
        experiment = mlflow.get_experiment_by_name(STUDY).experiment_id
        parent, = mlflow.search_runs([experiment], filter_string="tags.`prunebench.kind` = 'study'")
        children = mlflow.search_runs([experiment], filter_string=f"tags.`prunebench.sweep` = '{STUDY}'")
        assert len(children) == 2 and {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
        assert len({c.data.tags["node_id"] for c in children}) == 2  # one trial on each node
        for child in children:
            assert child.info.status == "FINISHED" and child.data.tags["prunebench.kind"] == "eval"
            assert {"AP", "pkr", "gmacs"} <= set(child.data.metrics)
            assert child.data.params["code_version"] == CODE_VERSION  # captured at submission, travelled with the job
            assert child.data.tags["checkpoint_uri"].startswith(f"s3://{BUCKET}/ray/{STUDY}/")
            assert child.info.artifact_uri.startswith("mlflow-artifacts:")  # served by the MLflow server
            run_id = child.info.run_id
            got = Path(mlflow.download_artifacts(run_id, "", str(tmp_path / "downloads" / run_id)))
            assert isinstance(json.loads((got / "results.json").read_text()), list)
            assert (got / "keep_masks.png").read_bytes().startswith(b"\x89PNG")
            assert read_meta(got / "checkpoint" / "model.safetensors")["method"] == "dynamicvit"
            assert json.loads((got / "metrics.json").read_text())["AP"] == pytest.approx(child.data.metrics["AP"])
        stored = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
                  for o in page.get("Contents", [])]
        assert sum(k.startswith(f"ray/{STUDY}/") and k.endswith("/model.safetensors") for k in stored) == 2  # Ray's
        for child in children:  # MLflow's artifacts are in the bucket
            assert f"mlflow/{urlparse(child.info.artifact_uri).path.strip('/')}/results.json" in stored

        # nothing of the nodes is left: not their processes, not their folders, not the job's package
        for node in (head, worker):  # each node unpacked the job's package and ran its trial in its own folder
            assert list(node.ray.glob("session_*/runtime_resources/working_dir_files/*"))
            assert list(node.ray.glob(f"session_*/artifacts/*/{STUDY}/working_dirs/*"))
        stop_tagged([f"{nodes_root}/"])
        shutil.rmtree(nodes_root)
        shutil.rmtree(project)
        fresh = tmp_path / "fresh"
        fresh.mkdir()
        report = cli(["report", "--tracking-uri", uri, "--out", "report", "--goals", "0.55", "--json"],
                     env=client, cwd=fresh, timeout=deadline.left())
        settings = {r["setting"]: r for r in report["settings"]}
        assert {r["method"] for r in settings.values()} == {"dense", "dynamicvit"} and len(settings) == 3
        trial_ap = sorted(c.data.metrics["AP"] for c in children)
        assert sorted(r["AP"] for r in settings.values() if r["method"] == "dynamicvit") == pytest.approx(trial_ap)
        assert [r["method"] for r in report["leaderboard"]] == ["dynamicvit"]
        assert (fresh / "report" / "leaderboard.md").is_file() and (fresh / "report" / "report.html").is_file()
        runs = mlflow.search_runs([e.experiment_id for e in mlflow.search_experiments()])
        print(f"\nshared-nothing: {time.monotonic() - deadline.start:.0f} s; MLflow runs: {len(runs)} "
              f"({len(children)} trials, report from {len(report['settings'])} settings)")
    finally:
        stop_tagged([f"{nodes_root}/"], roots=[server.pid for server in servers])
        shutil.rmtree(nodes_root, ignore_errors=True)
