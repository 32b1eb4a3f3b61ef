"""Platform commands with MLflow: training stages on Ray Train, evaluations, and the demo's trials.

Each command is checked first (``platform.preflight``, called by the CLI) and reads its data (so bad
input stops before Ray or MLflow start and nothing is written), then runs, then logs through the one
``Tracker``: params (the flattened config, method, seed, code version, dataset split hash, hardware),
per-epoch training metrics, final metrics and artifacts. A run whose work fails ends FAILED
(``Tracker.ending``), never stays RUNNING. Evaluation runs are tagged ``prunebench.kind = eval`` with ``method``, ``target``,
``backbone`` and ``dataset``: the reports read exactly these. An evaluation run is keyed by all its
params (checkpoint sha256, dataset hash, eval seed and settings, method parameters, code version,
hardware): a re-run with identical params finds it again, any difference makes a new run.

A training stage's run logs its checkpoint (``checkpoint/model.safetensors``) and the checkpoint records
the run's id (``mlflow_run_id``), which an evaluation of it names in its tag ``prunebench.train_run``.
A report is logged on a run of its own kind (``report``), which no leaderboard reads.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any

from prunebench.config import ExperimentConfig
from prunebench.platform.dense_cache import DenseModel, dense_model
from prunebench.platform.ray_train import Scaling, connect_checked, join_cluster_first, train_on_ray
from prunebench.platform.tracking import Tracker, flatten, hardware, params_key, resolve_tracking_uri
from prunebench.platform.trial_spec import TrialSpec
from prunebench.reports.report import write_report
from prunebench.training.checkpoint import code_version, read_meta
from prunebench.training.protocol import evaluate_checkpoint, load_datasets
from prunebench.validation import to_dict

log = logging.getLogger(__name__)


def run_params(config: ExperimentConfig, dataset_sha256: str) -> dict[str, str]:
    """The params every run logs."""
    return {**flatten(to_dict(config)), **hardware(), "seed": str(config.seed), "code_version": code_version(),
            "dataset_sha256": dataset_sha256, "backbone": config.model.backbone}


def _tags(config: ExperimentConfig, kind: str, method: str, target: float | None, dataset: str) -> dict[str, str]:
    return {"prunebench.kind": kind, "method": method, "target": "" if target is None else f"{target:.2f}",
            "backbone": config.model.backbone, "dataset": dataset}


def train_stage_logged(config: ExperimentConfig, stage: str, out: str | None, init: str | None, scaling: Scaling,
                       storage_path: str | None, address: str | None, tracking_uri: str | None,
                       max_failures: int = 3, parent: str | None = None) -> dict[str, Any]:
    """``prunebench train`` / ``finetune``: one stage on Ray Train, logged as one MLflow run."""
    gpus = scaling.workers if scaling.use_gpu else 0
    join_cluster_first(address, gpus)
    train_set, _ = load_datasets(config, need=("train",))
    method = "dense" if stage == "train" else config.method.name
    target = Path(out or Path(config.out) / f"{method}.safetensors").resolve()
    connect_checked(address, gpus)  # before a run is opened
    tracker = Tracker(resolve_tracking_uri(tracking_uri, config.out))
    experiment = tracker.experiment(config.name)
    run = tracker.run(experiment, f"{stage}:{target}", name=f"{stage}-{method}", parent=parent,
                      tags=_tags(config, stage, method, None, train_set.sha256))
    with tracker.ending(run):
        tracker.log_params(run, {**run_params(config, train_set.sha256), "stage": stage, "method": method,
                                 "init_checkpoint": str(init)})
        tic = time.perf_counter()
        result = train_on_ray(config, stage, target, init, scaling, storage_path, max_failures=max_failures,
                              meta={"mlflow_run_id": run})
        tracker.log_file_as(run, target, "checkpoint/model.safetensors")
        for record in result.history:
            numbers = {f"train_{k}": float(record[k]) for k in ("loss", "task_loss", "prune_loss", "keep", "lr") if k in record}
            tracker.log_metrics(run, numbers, step=int(record["step"]))
        tracker.log_metrics(run, {"train_seconds": time.perf_counter() - tic})
    return {"checkpoint": str(target), "mlflow_run_id": run, "ray_result": result.path,
            "epochs_reported": len(result.history)}


def evaluate_logged(config: ExperimentConfig, checkpoint: str, out: str | None, timing: bool = True,
                    tracking_uri: str | None = None, target: float | None = None, parent: str | None = None) -> dict[str, Any]:
    """``prunebench eval``: full evaluation, logged as an MLflow run of kind ``eval`` keyed by its params."""
    meta = read_meta(checkpoint)
    metrics = evaluate_checkpoint(config, checkpoint, out, timing=timing)  # reads and checks the data
    dataset = metrics["dataset_sha256"]
    with open(checkpoint, "rb") as handle:
        checkpoint_sha256 = hashlib.file_digest(handle, "sha256").hexdigest()
    method_params = {f"method.params.{k}": str(v) for k, v in metrics["params"].items()}
    params = {**run_params(config, dataset), **method_params, "method": meta["method"], "checkpoint": str(checkpoint),
              "checkpoint_sha256": checkpoint_sha256, "eval.seed": str(config.eval.seed), "eval.timing": str(timing)}
    tags = _tags(config, "eval", meta["method"], target, dataset)
    if meta.get("mlflow_run_id"):
        tags["prunebench.train_run"] = meta["mlflow_run_id"]
    tracker = Tracker(resolve_tracking_uri(tracking_uri, config.out))
    experiment = tracker.experiment(config.name)
    run = tracker.run(experiment, params_key("eval", params), name=f"eval-{meta['method']}", parent=parent, tags=tags)
    with tracker.ending(run):
        tracker.log_params(run, params)
        tracker.log_evaluation(run, metrics, Path(metrics["results"]).parent)
    return {**metrics, "mlflow_run_id": run}


def report_logged(tracking_uri: str, out: str | Path, experiment: str | None,
                  goals: tuple[float, ...]) -> dict[str, Any]:
    """``prunebench report``: write the report, then log its files on a run of kind ``report`` in the experiment
    it reports on (``reports`` for all experiments), one run per report folder and goals."""
    result = write_report(tracking_uri, out, experiment, goals)
    tracker = Tracker(tracking_uri)
    experiment_id = tracker.experiment(experiment or "reports")
    params = {"experiment": experiment or "*", "goals": ",".join(f"{g:g}" for g in goals), "out": str(Path(out).resolve())}
    run = tracker.run(experiment_id, params_key("report", params), name="report", tags={"prunebench.kind": "report"})
    with tracker.ending(run):
        tracker.log_params(run, params)
        for path in result["files"]:
            tracker.log_artifact(run, path, "report")
    return {**result, "mlflow_run_id": run}


def cached_dense(config: ExperimentConfig, tracker: Tracker, parent: str | None, uri: str, address: str | None) -> DenseModel:
    """The dense checkpoint of ``config`` in ``<out>/dense.safetensors``: from the dense cache, or trained once
    on Ray Train (an MLflow run under ``parent``) and cached."""
    train, valid = load_datasets(config)
    threads = max(1, config.eval.threads)

    def train_into(target: Path) -> None:
        train_stage_logged(config, "train", str(target), None, Scaling(1, config.device == "cuda", threads), None,
                           address, uri, parent=parent)

    dense = dense_model(config, train, valid, Path(config.out) / "dense.safetensors", train_into)
    log.info("dense model %s (cache key %s)", "reused from the cache" if dense.reused else "trained", dense.key)
    if parent is not None:
        tracker.set_tags(parent, {"dense_cache_key": dense.key, "dense_reused": str(dense.reused).lower()})
    return dense


DEMO_CAVEAT = ("These rows come from {steps}-step fine-tunes and one seed: too short to rank methods. "
               "For a verdict run `prunebench benchmark benchmark-cpu` (converged fine-tuning, settings that bracket "
               "each goal, several seeds, confidence intervals, random and oracle controls).")


def run_demo(config: ExperimentConfig, specs: tuple[TrialSpec, ...], tracking_uri: str | None = None,
             address: str | None = None) -> dict[str, Any]:
    """The main job, a 10-minute tour of the machinery: synthetic data → dense (Ray Train, cached) → every method
    at each goal's preset (Ray Tune grid of fine-tune + evaluation trials) → FPS of every model, one after
    another → MLflow → report and leaderboard, with the caveat that its rows are too short to rank methods.
    ``config``: the ``demo`` preset, checked first (``platform.preflight``); ``specs``: its trials
    (``benchmark_grid.demo_specs``)."""
    from prunebench.platform.benchmark import run_benchmark

    result = run_benchmark(config, tracking_uri=tracking_uri, address=address, specs=specs)
    caveat = DEMO_CAVEAT.format(steps=config.finetune.steps)
    return {**result, "table": f"{result['table']}\n\n{caveat}", "caveat": caveat}
