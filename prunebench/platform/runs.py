"""Platform commands with MLflow: training stages on Ray Train, evaluations, and the demo.

Each command checks its data first (so bad input stops before Ray or MLflow start and nothing is
written), then runs, then logs through the one ``Tracker``: params (the flattened config, method,
seed, code version, dataset split hash, hardware), per-epoch training metrics, final metrics and
artifacts. Evaluation runs are tagged ``prunebench.kind = eval`` with ``method``, ``target``,
``backbone`` and ``dataset``: the reports read exactly these.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from ray import tune

from prunebench.config import ExperimentConfig, MethodConfig, load_config
from prunebench.models.presets import PKR_TARGETS, pruning_methods
from prunebench.platform.ray_train import Scaling, connect, train_on_ray
from prunebench.platform.study import MLflowTrials, TrialInfo, finetune_and_evaluate
from prunebench.platform.tracking import (
    Tracker,
    flatten,
    hardware,
    resolve_tracking_uri,
)
from prunebench.atomic import write_json
from prunebench.evaluation.vis_eval import measure_fps
from prunebench.reports.report import write_report
from prunebench.training.checkpoint import code_version, read_meta
from prunebench.training.protocol import (
    Variant,
    evaluate_checkpoint,
    load_model,
    load_datasets,
    protocol_variants,
)
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
    tracker = Tracker(resolve_tracking_uri(tracking_uri, config.out))
    experiment = tracker.experiment(config.name)
    run = tracker.run(experiment, f"{stage}:{target}", name=f"{stage}-{method}", parent=parent,
                      tags=_tags(config, stage, method, None, train_set.sha256))
    tracker.log_params(run, {**run_params(config, train_set.sha256), "stage": stage, "method": method,
                             "init_checkpoint": str(init)})
    connect(address)
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


@dataclass(frozen=True)
class VariantTrials:
    """Describes demo trials (a grid over variant labels) for MLflow (picklable)."""

    variants: tuple[Variant, ...]

    def __call__(self, sampled: dict[str, Any]) -> TrialInfo:
        variant = next(v for v in self.variants if v.label == sampled["variant"])
        return TrialInfo(variant.label, variant.method, variant.params,
                         {"method": variant.method, "target": f"{variant.target:.2f}"})


def _variant_trial(sampled: dict[str, Any], experiment: dict[str, Any], variants: tuple[Variant, ...],
                   dense: str, threads: int) -> None:
    variant = next(v for v in variants if v.label == sampled["variant"])
    config = replace(load_config(experiment), method=MethodConfig(variant.method, variant.params))
    finetune_and_evaluate(config, dense, reports=2, threads=threads)


def run_demo(out: str, overrides: dict[str, Any], tracking_uri: str | None = None, address: str | None = None) -> dict[str, Any]:
    """The main job: synthetic data → dense (Ray Train) → every method × target (Ray Tune grid, fine-tune
    + evaluation) → FPS of every model, one after another → MLflow → report and leaderboard."""
    begin = time.perf_counter()
    config = load_config("demo", {"out": out, "data.root": f"{out}/data", **overrides})
    train_set, valid_set = load_datasets(config)
    log.info("[1/3] data ready: %d train / %d valid videos in %s", len(train_set.videos), len(valid_set.videos), config.data.root)
    uri = resolve_tracking_uri(tracking_uri, config.out)
    tracker = Tracker(uri)
    experiment = tracker.experiment(config.name)
    parent = tracker.run(experiment, f"demo:{Path(out).resolve()}", name="demo", tags={"prunebench.kind": "benchmark"})
    tracker.log_params(parent, run_params(config, valid_set.sha256))
    connect(address)
    threads = max(1, config.eval.threads)
    dense = train_stage_logged(config, "train", None, None, Scaling(1, False, threads), None, address, uri, parent=parent)
    dense_eval = evaluate_logged(config, dense["checkpoint"], str(Path(out) / "eval" / "dense"), timing=False,
                                 tracking_uri=uri, parent=parent)
    log.info("[2/3] dense model: AP %.1f (%.0f s so far)", dense_eval["AP"] or 0.0, time.perf_counter() - begin)
    variants = tuple(v for v in protocol_variants(pruning_methods(), PKR_TARGETS) if v.method != "dense")
    base = {**run_params(config, valid_set.sha256), "dense_checkpoint": dense["checkpoint"]}
    callback = MLflowTrials(uri, experiment, parent, "demo", VariantTrials(variants), base)
    trainable = tune.with_resources(
        tune.with_parameters(_variant_trial, experiment=to_dict(config), variants=variants,
                             dense=dense["checkpoint"], threads=1),
        {"cpu": 1},
    )
    # reuse_actors: the next trial runs in the finished one's process (torch etc. already imported)
    tuner = tune.Tuner(trainable, param_space={"variant": tune.grid_search([v.label for v in variants])},
                       tune_config=tune.TuneConfig(reuse_actors=True),
                       run_config=tune.RunConfig(name="demo-finetune", storage_path=str((Path(out) / "ray_results").resolve()),
                                                 callbacks=[callback], verbose=1))
    grid = tuner.fit()
    rows = [{**dense_eval, "label": "dense", "target": None, "eval_dir": str(Path(dense_eval["results"]).parent)}]
    for result in grid:
        folder = (result.metrics or {}).get("eval_dir")
        if folder:
            metrics = json.loads((Path(folder) / "metrics.json").read_text())
            variant = next(v for v in variants if v.label == result.config["variant"])
            run = tracker.find_run(experiment, f"trial:demo:{result.metrics['trial_id']}")
            rows.append({**metrics, "label": variant.label, "target": variant.target, "mlflow_run_id": run,
                         "eval_dir": folder})
    order = {v.label: i for i, v in enumerate(variants)}
    rows[1:] = sorted(rows[1:], key=lambda r: order[r["label"]])
    log.info("timing every model one after another (batch 1, %d threads, same frames)", config.eval.threads)
    for row in rows:
        model = load_model(config, row["checkpoint"], len(valid_set.categories))
        fps = measure_fps(model, valid_set, config.eval, config.data.max_size, torch.device(config.device))
        row.update(fps)
        if row.get("eval_dir"):
            write_json(Path(row["eval_dir"]) / "metrics.json", {k: v for k, v in row.items() if k not in ("mlflow_run_id", "eval_dir")})
        tracker.log_metrics(row["mlflow_run_id"], fps)
    tracker.end(parent)
    report = write_report(uri, Path(out) / "report", experiment=config.name)
    seconds = time.perf_counter() - begin
    tracker.log_metrics(parent, {"wall_seconds": seconds, "variants": float(len(rows))})
    log.info("[3/3] %d variants evaluated in %.0f s; report: %s; MLflow: %s", len(rows), seconds,
             Path(out) / "report" / "report.html", uri)
    return {"leaderboard": rows, "table": report["markdown"], "report": str(Path(out) / "report" / "report.html"),
            "report_files": report["files"], "mlflow_tracking_uri": uri, "mlflow_experiment_id": experiment,
            "wall_seconds": seconds}
