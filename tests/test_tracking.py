"""The MLflow writer: concurrent SQLite writers, idempotent runs, a real HTTP tracking server."""

import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from prunebench.platform.tracking import Tracker, flatten, numeric_metrics, resolve_tracking_uri

WRITERS, STEPS = 8, 15


def _writer(uri: str, index: int) -> None:
    tracker = Tracker(uri)
    experiment = tracker.experiment("concurrency")
    run = tracker.run(experiment, f"writer-{index}", name=f"writer-{index}")
    tracker.log_params(run, {"index": str(index), "kind": "writer"})
    for step in range(STEPS):
        tracker.log_metrics(run, {"value": float(index * 100 + step), "other": float(step)}, step=step)
    tracker.set_tags(run, {"done": "yes"})
    tracker.end(run)


@pytest.mark.slow
def test_eight_concurrent_writers_on_the_default_sqlite_store(tmp_path):
    uri = resolve_tracking_uri(None, tmp_path)
    assert uri == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    Tracker(uri).experiment("concurrency")  # create the schema once, as a sweep's driver does
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_writer, args=(uri, i)) for i in range(WRITERS)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(timeout=300)
    assert [p.exitcode for p in processes] == [0] * WRITERS  # no "database is locked" anywhere
    tracker = Tracker(uri)
    runs = tracker.client.search_runs([tracker.experiment("concurrency")], max_results=100)
    assert len(runs) == WRITERS
    for run in runs:
        index = int(run.data.params["index"])
        history = tracker.client.get_metric_history(run.info.run_id, "value")
        assert sorted(m.value for m in history) == [float(index * 100 + s) for s in range(STEPS)]
        assert run.info.status == "FINISHED" and run.data.tags["done"] == "yes"


def test_runs_are_found_again_by_key(tmp_path):
    tracker = Tracker(resolve_tracking_uri(None, tmp_path))
    experiment = tracker.experiment("idempotent")
    parent = tracker.run(experiment, "study:x", name="x")
    child = tracker.run(experiment, "trial:x:1", name="t1", parent=parent)
    assert tracker.run(experiment, "trial:x:1", name="t1", parent=parent) == child
    tracker.log_params(child, {"a": "1"})
    tracker.log_params(child, {"a": "1", "b": "2"})  # resume: existing params are skipped
    run = tracker.client.get_run(child)
    assert run.data.params == {"a": "1", "b": "2"} and run.data.tags["mlflow.parentRunId"] == parent
    assert len(tracker.client.search_runs([experiment])) == 2


def test_flatten_and_numeric_metrics():
    assert flatten({"train": {"lr": 0.1, "milestones": [0.5]}, "name": "x", "p": None}) == {
        "train.lr": "0.1", "train.milestones": "[0.5]", "name": "x", "p": "null"}
    assert numeric_metrics({"AP": 41.0, "APm": None, "ioi": {"all": 80.0, "S": None}, "per_block_keep": [1, 0.5],
                            "method": "vpp", "ok": True}) == {
        "AP": 41.0, "ioi_all": 80.0, "per_block_keep_00": 1.0, "per_block_keep_01": 0.5}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_the_same_writer_logs_to_an_http_server(tmp_path):
    port = _free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    server = subprocess.Popen(
        [str(mlflow_bin), "server", "--backend-store-uri", f"sqlite:///{tmp_path}/srv.db",
         "--artifacts-destination", str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        deadline = time.time() + 120
        while True:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status == 200:
                    break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise
                time.sleep(1)
        uri = f"http://127.0.0.1:{port}"
        os.environ["MLFLOW_TRACKING_URI"] = uri
        try:
            assert resolve_tracking_uri(None, tmp_path) == uri
        finally:
            del os.environ["MLFLOW_TRACKING_URI"]
        tracker = Tracker(uri)
        experiment = tracker.experiment("over-http")
        run = tracker.run(experiment, "k", name="http-run")
        tracker.log_metrics(run, {"AP": 42.0}, step=1)
        (tmp_path / "note.txt").write_text("hello")
        tracker.log_artifact(run, tmp_path / "note.txt")
        tracker.end(run)
        got = tracker.client.get_run(run)
        assert got.data.metrics["AP"] == 42.0 and got.info.status == "FINISHED"
        assert [a.path for a in tracker.client.list_artifacts(run)] == ["note.txt"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
