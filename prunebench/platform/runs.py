"""Platform commands with MLflow: training stages on Ray Train, evaluations, and the demo's trials.

Each command checks its data first (so bad input stops before Ray or MLflow start and nothing is
written), then runs, then logs through the one ``Tracker``: params (the flattened config, method,
seed, code version, dataset split hash, hardware), per-epoch training metrics, final metrics and
artifacts. Evaluation runs are tagged ``prunebench.kind = eval`` with ``method``, ``target``,
``backbone`` and ``dataset``: the reports read exactly these.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from prunebench.config import ExperimentConfig, load_config
from prunebench.models.presets import PKR_TARGETS, params_for_target, pruning_methods
from prunebench.platform.dense_cache import DenseModel, dense_model
from prunebench.platform.ray_train import Scaling, connect, train_on_ray
from prunebench.platform.resources import check_cluster_gpus
from prunebench.platform.tracking import Tracker, flatten, hardware, resolve_tracking_uri
from prunebench.platform.trial import TrialSpec
from prunebench.training.checkpoint import code_version, read_meta
from prunebench.training.protocol import evaluate_checkpoint, load_datasets
from prunebench.typed import to_dict

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
    train_set, _ = load_datasets(config)
    method = "dense" if stage == "train" else config.method.name
    target = Path(out or Path(config.out) / f"{method}.safetensors").resolve()
    connect(address)
    check_cluster_gpus(scaling.workers if scaling.use_gpu else 0)  # before a run is opened
    tracker = Tracker(resolve_tracking_uri(tracking_uri, config.out))
    experiment = tracker.experiment(config.name)
    run = tracker.run(experiment, f"{stage}:{target}", name=f"{stage}-{method}", parent=parent,
                      tags=_tags(config, stage, method, None, train_set.sha256))
    tracker.log_params(run, {**run_params(config, train_set.sha256), "stage": stage, "method": method,
                             "init_checkpoint": str(init)})
    tic = time.perf_counter()
    try:
        result = train_on_ray(config, stage, target, init, scaling, storage_path, max_failures=max_failures)
    except BaseException:
        tracker.end(run, ok=False)
        raise
    for record in result.history:
        numbers = {f"train_{k}": float(record[k]) for k in ("loss", "task_loss", "prune_loss", "keep", "lr") if k in record}
        tracker.log_metrics(run, numbers, step=int(record["step"]))
    tracker.log_metrics(run, {"train_seconds": time.perf_counter() - tic})
    tracker.end(run)
    return {"checkpoint": str(target), "mlflow_run_id": run, "ray_result": result.path,
            "epochs_reported": len(result.history)}


def evaluate_logged(config: ExperimentConfig, checkpoint: str, out: str | None, timing: bool = True,
                    tracking_uri: str | None = None, target: float | None = None, parent: str | None = None) -> dict[str, Any]:
    """``prunebench eval``: full evaluation, logged as an MLflow run of kind ``eval``."""
    meta = read_meta(checkpoint)
    metrics = evaluate_checkpoint(config, checkpoint, out, timing=timing)  # reads and checks the data
    dataset = metrics["dataset_sha256"]
    tracker = Tracker(resolve_tracking_uri(tracking_uri, config.out))
    experiment = tracker.experiment(config.name)
    run = tracker.run(experiment, f"eval:{Path(checkpoint).resolve()}:{config.eval.seed}", name=f"eval-{meta['method']}",
                      parent=parent, tags=_tags(config, "eval", meta["method"], target, dataset))
    params = {f"method.params.{k}": str(v) for k, v in metrics["params"].items()}
    tracker.log_params(run, {**run_params(config, dataset), **params, "method": meta["method"],
                             "checkpoint": str(checkpoint), "eval.seed": str(config.eval.seed)})
    tracker.log_evaluation(run, metrics, Path(metrics["results"]).parent)
    tracker.end(run)
    return {**metrics, "mlflow_run_id": run}


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


def demo_specs(config: ExperimentConfig) -> tuple[TrialSpec, ...]:
    """The demo's trials: every pruning method at its preset for each goal PKR, one seed."""
    return tuple(TrialSpec(f"{m}-{t:.2f}", m, params_for_target(m, t), config.seed,
                           {"target": f"{t:.2f}", "setting": f"{t:.2f}"})
                 for m in pruning_methods() for t in PKR_TARGETS)


DEMO_CAVEAT = ("These rows come from {steps}-step fine-tunes and one seed: too short to rank methods. "
               "For a verdict run `prunebench benchmark benchmark-cpu` (converged fine-tuning, settings that bracket "
               "each goal, several seeds, confidence intervals, random and oracle controls).")


def run_demo(out: str, overrides: dict[str, Any], tracking_uri: str | None = None, address: str | None = None) -> dict[str, Any]:
    """The main job, a 10-minute tour of the machinery: synthetic data → dense (Ray Train, cached) → every method
    at each goal's preset (Ray Tune grid of fine-tune + evaluation trials) → FPS of every model, one after
    another → MLflow → report and leaderboard, with the caveat that its rows are too short to rank methods."""
    from prunebench.platform.benchmark import run_benchmark

    config = load_config("demo", {"out": out, "data.root": f"{out}/data", **overrides})
    result = run_benchmark(config, tracking_uri=tracking_uri, address=address, specs=demo_specs(config))
    caveat = DEMO_CAVEAT.format(steps=config.finetune.steps)
    return {**result, "table": f"{result['table']}\n\n{caveat}", "caveat": caveat}
