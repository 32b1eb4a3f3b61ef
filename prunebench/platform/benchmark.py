"""``prunebench benchmark``: the leaderboard run.

1. Everything the run needs is checked first (the model, pretrained weights and device by
   ``platform.preflight``; methods, every parameter set, the goals bracketed by the settings and a
   ``--resume`` target by ``platform.benchmark_grid``; the data here), before Ray or MLflow start.
2. The dense model comes from the content-keyed cache or is trained once on Ray Train
   (``platform.dense_cache``).
3. A Ray Tune grid of the dense reference (evaluated as it is) and methods × keep settings × seeds:
   each trial fine-tunes from the same dense checkpoint and evaluates (``platform.trial``); one MLflow
   child run per trial under one parent.
4. Every model is timed afterwards, one at a time, in one Ray task with a trial's GPUs (batch 1,
   ``eval.threads``), so all are timed under the same conditions on the cluster, not on the driver.
5. The report (leaderboard with AP at the goal PKRs, confidence intervals, significance, convergence)
   is built from MLflow and logged on the parent run.

``resume`` restores a benchmark whose driver died: finished trials are neither lost nor run twice,
and their MLflow runs are found again.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import ray
import torch
from ray.tune import Checkpoint

from prunebench.config import ExperimentConfig, load_config
from prunebench.evaluation.vis_eval import measure_fps
from prunebench.platform.benchmark_grid import dense_reference
from prunebench.platform.ray_train import connect_checked, join_cluster_first
from prunebench.platform.resources import gpus_per_trial, worker_config
from prunebench.platform.runs import cached_dense, run_params
from prunebench.platform.resume import ray_storage
from prunebench.platform.sweep import Sweep, run_sweep
from prunebench.platform.tracking import Tracker, resolve_tracking_uri
from prunebench.platform.trial import WEIGHTS
from prunebench.platform.trial_spec import GridTrials, TrialSpec
from prunebench.platform.trial_tracking import MLflowTrials, log_final
from prunebench.reports.report import write_report
from prunebench.training.checkpoint import read_checkpoint
from prunebench.training.protocol import load_datasets, load_model
from prunebench.validation import to_dict

log = logging.getLogger(__name__)


def _time_checkpoints(experiment: dict[str, Any], checkpoints: list[tuple[str, Checkpoint]]) -> dict[str, dict[str, float]]:
    """A Ray task: time every checkpoint one after another on the same worker (batch 1, eval.threads)."""
    config = worker_config(load_config(experiment))
    torch.set_num_threads(config.eval.threads)
    _, valid = load_datasets(config)
    timings = {}
    for run, checkpoint in checkpoints:
        with checkpoint.as_directory() as folder:
            model = load_model(config, read_checkpoint(Path(folder) / WEIGHTS), len(valid.categories))
        timings[run] = measure_fps(model, valid, config.eval, config.data.max_size, torch.device(config.device),
                                   config.precision)
    return timings


def time_models(config: ExperimentConfig, tracker: Tracker, rows: list[tuple[str, Checkpoint]], gpus: float) -> None:
    """Time every ``(run id, checkpoint)`` in one Ray task (``eval.threads`` CPUs and a trial's GPUs, so all are
    timed under the same conditions); log FPS on each run. Runs that already have it (resume) are skipped."""
    todo = [(run, ckpt) for run, ckpt in rows if "fps_model" not in tracker.client.get_run(run).data.metrics]
    if not todo:
        return
    task = ray.remote(num_cpus=config.eval.threads, num_gpus=gpus)(_time_checkpoints)
    for run, fps in ray.get(task.remote(to_dict(config), todo)).items():
        tracker.log_metrics(run, fps)


def run_benchmark(config: ExperimentConfig, specs: tuple[TrialSpec, ...], resume: bool = False,
                  tracking_uri: str | None = None, address: str | None = None,
                  storage_path: str | None = None) -> dict[str, Any]:
    """The leaderboard run (see the module docstring) of ``specs``: the grid ``check_benchmark`` returned (which
    also checked that a ``resume`` has something to resume), or the demo's rows."""
    begin = time.perf_counter()
    out = Path(config.out)
    storage = ray_storage(config.out, storage_path)
    gpus = gpus_per_trial(config, config.benchmark.gpus_per_trial)
    join_cluster_first(address, gpus)
    train_set, valid_set = load_datasets(config)  # reads and checks the data (generates synthetic data once)
    log.info("[1/4] data: %d train / %d valid videos; %d trials", len(train_set.videos), len(valid_set.videos), len(specs))
    connect_checked(address, gpus)  # before any MLflow run is opened
    uri = resolve_tracking_uri(tracking_uri, config.out)
    tracker = Tracker(uri)
    experiment = tracker.experiment(config.name)
    parent = tracker.run(experiment, f"benchmark:{config.name}:{out.resolve()}", name=config.name,
                         tags={"prunebench.kind": "benchmark"})
    with tracker.ending(parent):
        tracker.log_params(parent, {**run_params(config, valid_set.sha256), "trials": str(len(specs))})
        dense = cached_dense(config, tracker, parent, uri, address)
        specs = (dense_reference(config), *specs)
        grid = GridTrials(specs)
        sweep = Sweep(config.name, grid, grid.param_space(), cpus_per_trial=config.benchmark.cpus_per_trial,
                      gpus_per_trial=gpus)
        base = {**run_params(config, valid_set.sha256), "dense_checkpoint": str(dense.checkpoint)}
        callback = MLflowTrials(uri, experiment, parent, config.name, grid, base,
                                {"backbone": config.model.backbone, "dataset": valid_set.sha256})
        log.info("[2/4] dense model ready (%.0f s so far); %d trials", time.perf_counter() - begin, len(specs))
        results = run_sweep(sweep, config, str(dense.checkpoint), storage, [callback], resume=resume)
        timed = []
        for result in results:  # what a killed driver did not log yet (log_final is idempotent)
            trial_id = result.metrics.get("trial_id") if result.metrics else None
            if trial_id is None:
                continue
            run = callback.run_for(trial_id, result.config)
            log_final(tracker, run, result.metrics, result.checkpoint)
            if result.metrics.get("evaluated") and result.checkpoint is not None:
                timed.append((run, result.checkpoint))
        callback.abandon_orphans({r.metrics["trial_id"] for r in results if r.metrics and "trial_id" in r.metrics})
        log.info("[3/4] %d models evaluated; timing every one after another", len(timed))
        time_models(config, tracker, timed, gpus)
        report = write_report(uri, out / "report", experiment=config.name, goals=config.benchmark.goals)
        for path in report["files"]:
            tracker.log_artifact(parent, path, "report")
        seconds = time.perf_counter() - begin
        tracker.log_metrics(parent, {"wall_seconds": seconds, "trials": float(len(specs))})
    log.info("[4/4] report: %s; MLflow: %s (%.0f s)", out / "report" / "report.html", uri, seconds)
    return {"leaderboard": report["leaderboard"], "report": str(out / "report" / "report.html"),
            "report_files": report["files"], "table": report["markdown"], "mlflow_tracking_uri": uri,
            "mlflow_experiment_id": experiment, "dense_reused": dense.reused, "wall_seconds": seconds,
            "trials": len(specs) - 1}
