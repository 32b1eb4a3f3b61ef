"""MLflow tracking through one writer.

Every MLflow write of prunebench goes through ``Tracker``. On a SQLite store (the default,
``sqlite:///<out>/mlflow.db``) each write holds an exclusive lock file beside the database, so any
number of processes on the machine write one after another and SQLite never reports "database is
locked"; a write that still meets a lock is retried with back-off. On an HTTP store
(``MLFLOW_TRACKING_URI=http://...`` or ``--tracking-uri``) the server serialises, and no lock is
taken. Ray workers never write: the driver (a Tune callback, or the command itself) does.

Runs are created idempotently by tag (``prunebench.key``): a resumed study finds the parent and
child runs it already made instead of making new ones. Every run carries MLflow's source tags
(``mlflow.source.git.commit``, ``mlflow.user``, ``mlflow.source.name``, ``mlflow.source.type``).

Inputs named by URI (``s3://...``, ``runs:/<run_id>/<path>``) are downloaded once (``fetch_input``).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import getpass
import hashlib
import json
import logging
import os
import platform
import posixpath
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import mlflow.artifacts
import torch
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR

import prunebench
from prunebench.atomic import staged_folder
from prunebench.errors import ConfigError
from prunebench.training.checkpoint import code_commit

T = TypeVar("T")
log = logging.getLogger(__name__)
KEY_TAG = "prunebench.key"
PARENT_TAG = "mlflow.parentRunId"
MAX_PARAM_LENGTH = 6000
REMOTE_INPUTS = ("s3://", "runs:/", "mlflow-artifacts:/")


def resolve_tracking_uri(explicit: str | None, out: str | Path) -> str:
    """``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<abs out>/mlflow.db`` (its folder is made
    when a ``Tracker`` opens the store, not here: a refused command leaves no folder)."""
    uri = explicit or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{Path(out).resolve() / 'mlflow.db'}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` store; None for any other store."""
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"train": {"lr": 1e-4}}`` → ``{"train.lr": "0.0001"}``; lists and None as JSON."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{name}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value)
            out[name] = text[:MAX_PARAM_LENGTH]
    return out


@functools.cache
def entry_point() -> str:
    """The command that started this process, e.g. ``prunebench benchmark`` (read once per process)."""
    program, *args = sys.argv or ["python"]
    if Path(program).name != "prunebench" and not program.endswith(os.path.join("prunebench", "platform", "cli.py")):
        return Path(program).name
    command = next((a for a in args if not a.startswith("-")), None)
    return "prunebench" if command is None else f"prunebench {command}"


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (containers)
        return str(os.getuid())


def source_tags() -> dict[str, str]:
    """MLflow's standard source tags: commit of the code version (when known), user, entry point, and
    ``JOB`` for a submitted Ray job (Ray sets ``RAY_JOB_CONFIG_JSON_ENV_VAR`` for its entrypoint) or ``LOCAL``."""
    tags = {"mlflow.user": _user(), "mlflow.source.name": entry_point(),
            "mlflow.source.type": "JOB" if RAY_JOB_CONFIG_JSON_ENV_VAR in os.environ else "LOCAL"}
    commit = code_commit()
    return {**tags, "mlflow.source.git.commit": commit} if commit else tags


def params_key(kind: str, params: Mapping[str, str]) -> str:
    """A run key (``kind:<digest>``) that changes whenever any of ``params`` does."""
    digest = hashlib.sha256(json.dumps(sorted(params.items())).encode()).hexdigest()
    return f"{kind}:{digest[:32]}"


def fetch_input(source: str, folder: str | Path, tracking_uri: str, flag: str = "--from",
                check: Callable[[Path], object] = lambda path: None) -> Path:
    """A local file: ``source`` itself, or ``s3://...`` / ``runs:/<run_id>/<path>`` downloaded once into
    ``folder/<digest of source>/`` (a second call finds it there). ``check(path)`` runs on the file before it is
    used, and a download is kept only once it passed (a refused one leaves nothing). ConfigError: one line naming it."""
    what = f"{flag} {source}"
    allowed = "allowed: a local file, s3://BUCKET/KEY or runs:/<run_id>/<artifact path>"
    if not source.startswith(REMOTE_INPUTS):
        if "://" in source or source.startswith("runs:"):
            raise ConfigError(f"{what}: unsupported URI; {allowed}")
        path = Path(source).expanduser()
        if not path.is_file():
            raise ConfigError(f"{what}: {'a folder, not a file' if path.is_dir() else 'no such file'}; {allowed}")
        check(path)
        return path
    target = Path(folder) / hashlib.sha256(source.encode()).hexdigest()[:16]
    if target.is_dir():
        path = _only_file(target, what, allowed)
        check(path)
        return path
    store = sqlite_path(tracking_uri)
    if source.startswith("runs:/") and store is not None and not store.is_file():
        raise ConfigError(f"{what}: the MLflow store {tracking_uri} does not exist; "
                          "allowed: --tracking-uri of the store that holds the run")
    with tempfile.TemporaryDirectory(prefix="prunebench-input-") as tmp:
        download(source, Path(tmp), tracking_uri, what)
        path = _only_file(Path(tmp), what, allowed)
        check(path)
        return _keep(path, target)


def _only_file(folder: Path, what: str, allowed: str) -> Path:
    found = [p for p in folder.iterdir() if p.is_file()]
    if len(found) != 1:
        raise ConfigError(f"{what}: names a folder, not one file; {allowed}")
    return found[0]


def download(source: str, folder: Path, tracking_uri: str, what: str) -> None:
    """Download ``source`` (an artifact URI: ``runs:/<run_id>/<path>``, ``s3://...``) into ``folder``; one-line
    ConfigError naming ``what`` if it cannot be downloaded."""
    try:
        mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(folder), tracking_uri=tracking_uri)
    except Exception as error:  # MLflow, boto3 and the network each raise their own types
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"{what}: cannot download ({reason})") from None


def _keep(path: Path, target: Path) -> Path:
    """Copy ``path`` into the new folder ``target`` (complete or absent: renamed into place); the copy's path."""
    with staged_folder(target) as staging:
        shutil.copyfile(path, staging / path.name)
    return target / path.name


def hardware() -> dict[str, str]:
    """What the numbers were measured on."""
    info = {
        "hardware.machine": platform.machine(),
        "hardware.processor": platform.processor() or platform.machine(),
        "hardware.cpus": str(os.cpu_count()),
        "hardware.torch_threads": str(torch.get_num_threads()),
        "hardware.torch": torch.__version__,
        "hardware.gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
    }
    return info


def numeric_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The loggable numbers of a metrics dict: nested dicts flattened with ``_``, lists indexed."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, (int, float)):
            out[name] = float(value)
        elif isinstance(value, Mapping):
            out.update(numeric_metrics(value, f"{name}_"))
        elif isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) for v in value):
            out.update({f"{name}_{i:02d}": float(v) for i, v in enumerate(value)})
    return out


class Tracker:
    """The MLflow writer: experiments, idempotent runs, params, metrics, artifacts."""

    def __init__(self, uri: str):
        self.uri = uri
        database = sqlite_path(uri)
        self._lock_path = None if database is None else database.with_name(database.name + ".lock")
        if database is not None:
            database.parent.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=uri)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if self._lock_path is None:
            yield
            return
        with open(self._lock_path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _write(self, action: Callable[[], T], attempts: int = 8) -> T:
        delay = 0.2
        for attempt in range(attempts):
            try:
                with self._locked():
                    return action()
            except MlflowException as error:
                if "locked" not in str(error).lower() or attempt == attempts - 1:
                    raise
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    def experiment(self, name: str) -> str:
        """Id of experiment ``name`` (created if absent; artifacts beside a SQLite store)."""

        def get_or_create() -> str:
            found = self.client.get_experiment_by_name(name)
            if found is not None:
                return found.experiment_id
            location = None
            if self._lock_path is not None:
                location = (self._lock_path.parent / "mlartifacts" / name).resolve().as_uri()
            return self.client.create_experiment(name, artifact_location=location)

        return self._write(get_or_create)

    def find_run(self, experiment_id: str, key: str) -> str | None:
        """The run tagged ``prunebench.key = key``, if any."""
        runs = self.client.search_runs([experiment_id], filter_string=f"tags.`{KEY_TAG}` = '{key}'", max_results=1)
        return runs[0].info.run_id if runs else None

    def run(self, experiment_id: str, key: str, name: str, parent: str | None = None,
            tags: Mapping[str, str] | None = None) -> str:
        """The run for ``key``: found if it exists (an unfinished one is marked running again), else created
        (as a child of ``parent``)."""

        all_tags = {**source_tags(), KEY_TAG: key, "mlflow.runName": name,
                    "prunebench.version": prunebench.__version__, **(tags or {})}
        if parent:
            all_tags[PARENT_TAG] = parent

        def find_or_create() -> str:
            existing = self.find_run(experiment_id, key)
            if existing is not None:
                if self.client.get_run(existing).info.status != "FINISHED":  # resumed: running again
                    self.client.update_run(existing, status="RUNNING")
                return existing
            return self.client.create_run(experiment_id, run_name=name, tags=all_tags).info.run_id

        return self._write(find_or_create)

    def log_params(self, run_id: str, params: Mapping[str, str]) -> None:
        """Log params (values must not change on resume; existing equal ones are skipped)."""
        existing = self.client.get_run(run_id).data.params
        items = [Param(k, str(v)) for k, v in params.items() if k not in existing]
        for start in range(0, len(items), 100):
            batch = items[start:start + 100]
            self._write(lambda: self.client.log_batch(run_id, params=batch))

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
        """Log numeric metrics at ``step``."""
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        for start in range(0, len(items), 500):
            batch = items[start:start + 500]
            self._write(lambda: self.client.log_batch(run_id, metrics=batch))

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        """Set tags on a run."""
        items = [RunTag(k, str(v)) for k, v in tags.items()]
        self._write(lambda: self.client.log_batch(run_id, tags=items))

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        """Copy a file into the run's artifacts."""
        self._write(lambda: self.client.log_artifact(run_id, str(path), artifact_path))

    def log_file_as(self, run_id: str, path: str | Path, artifact_file: str) -> None:
        """Copy a file into the run's artifacts as ``artifact_file`` (e.g. ``checkpoint/model.safetensors``)."""
        folder, name = posixpath.split(artifact_file)
        with tempfile.TemporaryDirectory() as tmp:
            link = Path(tmp) / name
            link.symlink_to(Path(path).resolve())
            self.log_artifact(run_id, link, folder or None)

    def log_dict(self, run_id: str, data: Any, artifact_file: str) -> None:
        """Write ``data`` as a JSON artifact of the run (no file of ours on disk)."""
        self._write(lambda: self.client.log_dict(run_id, data, artifact_file))

    def end(self, run_id: str, ok: bool = True, killed: bool = False) -> None:
        """Mark a run FINISHED (or FAILED; or KILLED when ``killed``: it was abandoned, not broken)."""
        status = RunStatus.KILLED if killed else RunStatus.FINISHED if ok else RunStatus.FAILED
        self._write(lambda: self.client.set_terminated(run_id, status=RunStatus.to_string(status)))

    @contextlib.contextmanager
    def ending(self, run_id: str) -> Iterator[str]:
        """Around the work of a run: it ends FINISHED when the block completes; when the block raises it ends
        FAILED (KILLED on Ctrl-C), and so does every child run still RUNNING, so no run stays RUNNING."""
        try:
            yield run_id
        except BaseException as error:
            try:
                self._fail(run_id, killed=isinstance(error, KeyboardInterrupt))
            except Exception as cleanup:  # the store itself may be what failed: the first error is the one to see
                log.warning("could not mark MLflow run %s as failed: %s", run_id, cleanup)
            raise
        self.end(run_id)

    def _fail(self, run_id: str, killed: bool) -> None:
        experiment = self.client.get_run(run_id).info.experiment_id
        children = self.client.search_runs(
            [experiment], filter_string=f"tags.`{PARENT_TAG}` = '{run_id}' and attributes.status = 'RUNNING'")
        for run in [*(c.info.run_id for c in children), run_id]:
            self.end(run, ok=False, killed=killed)

    def log_evaluation(self, run_id: str, metrics: Mapping[str, Any], folder: str | Path) -> None:
        """Final metrics of an evaluation plus its files (results, metrics, config, keep-mask picture)."""
        skip = {"frames", "seed", "timed_frames"}
        self.log_metrics(run_id, {k: v for k, v in numeric_metrics(metrics).items() if k not in skip})
        for name in ("metrics.json", "results.json", "config.yaml", "keep_masks.png"):
            path = Path(folder) / name
            if path.exists():
                self.log_artifact(run_id, path)
