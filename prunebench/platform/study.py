"""``prunebench tune``: a Ray Tune + Optuna study over a method's search space.

Each trial fine-tunes the method from the dense checkpoint (the protocol's ``finetune`` schedule)
and evaluates it. The study is multi-objective: maximise AP and minimise PKR or GMACs
(``objective``), with ``OptunaSearch`` (NSGA-II) on a persistent Optuna storage
(``<out>/optuna.db``). ASHA stops trials early on the training loss (reported
``reports`` times per trial). Trials are function trainables of ``cpus_per_trial`` CPUs;
``max_concurrent_trials`` = cluster CPUs // cpus_per_trial, so the machine is filled and never
oversubscribed.

MLflow: one experiment per study, a parent run for the sweep, a child run per trial, all written
by the driver (``MLflowTrials``, a Tune callback); runs are keyed by study and trial id, so
``resume`` (``Tuner.restore``: finished trials stay finished, interrupted ones are resumed under
their own id) never makes a second run for a trial.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
import ray
import torch
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from prunebench.config import ExperimentConfig, MethodConfig, load_config
from prunebench.errors import ConfigError
from prunebench.platform.ray_train import connect, worker_logging
from prunebench.platform.tracking import Tracker, flatten, hardware, numeric_metrics
from prunebench.reports.pareto import pareto_front
from prunebench.search_spaces.loader import SearchSpace, load_space
from prunebench.training.checkpoint import code_version, save_checkpoint
from prunebench.training.loop import StepMetrics, mean_metrics, train_steps
from prunebench.training.protocol import evaluate_checkpoint, prepare_stage
from prunebench.typed import to_dict

log = logging.getLogger(__name__)
OBJECTIVES = ("pkr", "gmacs")


def finetune_and_evaluate(config: ExperimentConfig, dense: str, reports: int, threads: int) -> dict[str, Any]:
    """Inside a Tune trial: fine-tune ``config.method`` from ``dense``, report the loss ``reports`` times,
    evaluate, and report the final metrics (``eval_dir`` marks a finished evaluation).

    No FPS here: trials share the machine, so their timings would not be comparable (the demo times
    every checkpoint afterwards, one at a time; ``prunebench eval`` times one checkpoint)."""
    worker_logging()
    torch.set_num_threads(threads)
    # evaluation sets its own thread count: keep it to the trial's CPUs (more would oversubscribe
    # the cores shared with concurrent trials, several times slower with OpenMP's busy-waiting)
    config = replace(config, eval=replace(config.eval, threads=threads))
    node = ray.get_runtime_context().get_node_id()
    prepared = prepare_stage(config, "finetune", dense)
    every = max(1, prepared.optim.steps // reports)
    window: list[StepMetrics] = []
    last: dict[str, float] = {}

    def on_step(metrics: StepMetrics, optimizer: torch.optim.Optimizer) -> None:
        window.append(metrics)
        if metrics.step % every == 0 or metrics.step == prepared.optim.steps:
            mean = mean_metrics(window)
            window.clear()
            last.update(task_loss=mean.task_loss, loss=mean.loss, prune_loss=mean.prune_loss, keep=mean.keep)
            if metrics.step < prepared.optim.steps:
                tune.report({**last, "step": metrics.step, "node_id": node})

    train_steps(prepared.model, prepared.sampler, prepared.optim, config.seed, torch.device(config.device), on_step=on_step)
    folder = Path(tune.get_context().get_trial_dir())
    checkpoint = save_checkpoint(folder / "model.safetensors", prepared.model, prepared.meta)
    metrics = evaluate_checkpoint(config, checkpoint, folder / "eval", timing=False)
    final = numeric_metrics({k: v for k, v in metrics.items() if k != "params"})
    final["AP"] = metrics["AP"] if metrics["AP"] is not None else 0.0  # an objective must be a number
    tune.report({**final, **last, "step": prepared.optim.steps, "node_id": node, "eval_dir": str(folder / "eval"),
                 "checkpoint": str(checkpoint)})
    return metrics


def _trial(sampled: dict[str, Any], experiment: dict[str, Any], space_source: str, dense: str,
           reports: int, threads: int) -> None:
    """One study trial: the sampled parameters of the space's method."""
    space = load_space(space_source)
    config = replace(load_config(experiment), method=MethodConfig(space.method, space.method_params(sampled)))
    finetune_and_evaluate(config, dense, reports, threads)


@dataclass(frozen=True)
class TrialInfo:
    """How a trial is named and tagged in MLflow."""

    label: str
    method: str
    params: dict[str, Any]
    tags: dict[str, str]


@dataclass(frozen=True)
class SpaceTrials:
    """Describes study trials by the space's decoded parameters (picklable)."""

    space: SearchSpace

    def __call__(self, sampled: dict[str, Any]) -> TrialInfo:
        method = self.space.method
        return TrialInfo(method, method, self.space.method_params(sampled), {"method": method})


class MLflowTrials(tune.Callback):
    """The driver-side MLflow writer of a study: one child run per trial under the study's parent run."""

    def __init__(self, uri: str, experiment_id: str, parent_run_id: str, study: str,
                 describe: Callable[[dict[str, Any]], TrialInfo], base_params: dict[str, str]):
        self.uri, self.experiment_id, self.parent, self.study = uri, experiment_id, parent_run_id, study
        self.describe, self.base_params = describe, base_params
        self._tracker: Tracker | None = None

    def __getstate__(self) -> dict[str, Any]:  # the MLflow client is rebuilt after a restore
        return {**self.__dict__, "_tracker": None}

    @property
    def tracker(self) -> Tracker:
        if self._tracker is None:
            self._tracker = Tracker(self.uri)
        return self._tracker

    def _run(self, trial: Any) -> str:
        info = self.describe(trial.config)
        return self.tracker.run(self.experiment_id, f"trial:{self.study}:{trial.trial_id}",
                                name=f"{info.label}-{trial.trial_id}", parent=self.parent,
                                tags={"prunebench.kind": "eval", "prunebench.study": self.study,
                                      "trial_id": trial.trial_id, **info.tags})

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        described = self.describe(trial.config)
        params = {f"method.params.{k}": json.dumps(v) for k, v in described.params.items()}
        self.tracker.log_params(self._run(trial), {**self.base_params, **params, "method": described.method})

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        losses = {k: result[k] for k in ("task_loss", "loss", "prune_loss", "keep") if k in result}
        self.tracker.log_metrics(self._run(trial), {f"train_{k}": v for k, v in losses.items()},
                                 step=int(result.get("training_iteration", 0)))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run, result = self._run(trial), trial.last_result or {}
        folder = result.get("eval_dir")
        if folder and (Path(folder) / "metrics.json").exists():
            self.tracker.log_evaluation(run, json.loads((Path(folder) / "metrics.json").read_text()), folder)
        self.tracker.set_tags(run, {"node_id": str(result.get("node_id", "")), "stopped_early": str(not folder)})
        self.tracker.end(run, ok=True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.tracker.end(self._run(trial), ok=False)


def run_study(
    space_source: str,
    config: ExperimentConfig,
    dense_checkpoint: str | Path,
    tracking_uri: str,
    num_samples: int = 8,
    objective: str = "pkr",
    name: str | None = None,
    resume: bool = False,
    address: str | None = None,
    cpus_per_trial: int = 1,
    reports: int = 4,
    seed: int = 0,
) -> dict[str, Any]:
    """Run (or resume) a study; return its Pareto set (AP up, objective down) and names."""
    if objective not in OBJECTIVES:
        raise ConfigError(f"--objective {objective}: allowed: {', '.join(OBJECTIVES)}")
    if num_samples < 1 or cpus_per_trial < 1:
        raise ConfigError(f"--num-samples {num_samples} / --cpus-per-trial {cpus_per_trial}: allowed: integers >= 1")
    space = load_space(space_source)
    if not Path(dense_checkpoint).is_file():
        raise ConfigError(f"--from {dense_checkpoint}: dense checkpoint not found")
    name = name or f"tune-{space.method}"
    out = Path(config.out).resolve()
    storage_path = out / "ray_results"
    experiment_path = storage_path / name
    if resume and not tune.Tuner.can_restore(str(experiment_path)):
        raise ConfigError(f"--resume: no study '{name}' to resume under {storage_path}")
    # intermediate reports carry the training loss (for ASHA); AP / PKR / GMACs exist only once the
    # trial has been evaluated, so Tune must not demand the searcher's metrics in every report
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    connect(address)
    tracker = Tracker(tracking_uri)
    experiment_id = tracker.experiment(name)
    parent = tracker.run(experiment_id, f"study:{name}", name=name, tags={"prunebench.kind": "study", "method": space.method})
    base = {**flatten(to_dict(config)), **hardware(), "seed": str(config.seed), "code_version": code_version(),
            "dense_checkpoint": str(dense_checkpoint), "space": space.source, "objective": objective}
    tracker.log_params(parent, {**base, "num_samples": str(num_samples)})
    callback = MLflowTrials(tracking_uri, experiment_id, parent, name, SpaceTrials(space), base)
    trainable = tune.with_resources(
        tune.with_parameters(_trial, experiment=to_dict(config), space_source=space.source,
                             dense=str(Path(dense_checkpoint).resolve()), reports=reports, threads=cpus_per_trial),
        {"cpu": cpus_per_trial},
    )
    if resume:
        tuner = tune.Tuner.restore(str(experiment_path), trainable, resume_unfinished=True, resume_errored=True)
    else:
        searcher = OptunaSearch(
            metric=["AP", objective], mode=["max", "min"], seed=seed,
            sampler=optuna.samplers.NSGAIISampler(seed=seed, population_size=max(2, min(8, num_samples))),
            storage=optuna.storages.RDBStorage(f"sqlite:///{out / 'optuna.db'}"), study_name=name,
        )
        concurrency = max(1, int(ray.cluster_resources().get("CPU", 1)) // cpus_per_trial)
        tuner = tune.Tuner(
            trainable,
            param_space=space.tune_space(),
            tune_config=tune.TuneConfig(
                num_samples=num_samples, search_alg=searcher, max_concurrent_trials=concurrency,
                scheduler=ASHAScheduler(metric="task_loss", mode="min", time_attr="training_iteration",
                                        max_t=reports + 1, grace_period=max(1, reports // 2), reduction_factor=2),
            ),
            run_config=tune.RunConfig(name=name, storage_path=str(storage_path), callbacks=[callback]),
        )
    grid = tuner.fit()
    rows = []
    for result in grid:
        metrics = result.metrics or {}
        if "eval_dir" in metrics:
            rows.append({"trial_id": metrics.get("trial_id"), "AP": metrics["AP"], "pkr": metrics.get("pkr"),
                         "gmacs": metrics.get("gmacs"), "params": space.method_params(result.config)})
    best = pareto_front(rows, maximize="AP", minimize=objective)
    tracker.log_metrics(parent, {"trials": float(len(grid)), "evaluated_trials": float(len(rows)),
                                 "pareto_size": float(len(best))})
    tracker.end(parent)
    return {"best": best, "experiment": name, "trials": len(grid), "evaluated": len(rows),
            "mlflow_experiment_id": experiment_id, "path": str(experiment_path),
            "objective": objective}
