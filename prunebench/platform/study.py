"""``prunebench tune``: a Ray Tune + Optuna study over a method's search space.

Each trial fine-tunes the method from the dense checkpoint (the protocol's ``finetune`` schedule)
and evaluates it. The study is multi-objective: maximise AP and minimise PKR or GMACs
(``objective``), with ``OptunaSearch`` (NSGA-II) on a persistent Optuna storage
(``<out>/optuna.db``). ASHA stops trials early on the training loss (reported
``reports`` times per trial). Trials are function trainables of ``cpus_per_trial`` CPUs;
``max_concurrent_trials`` = cluster CPUs // cpus_per_trial, so the machine is filled and never
oversubscribed. Trials and their checkpoints are kept under ``storage_path`` (default
``<out>/ray_results``; on a multi-node cluster a URI such as ``s3://...``).

MLflow: one experiment per study, a parent run for the sweep, a child run per trial, all written
by the driver (``MLflowTrials``, a Tune callback); runs are keyed by study and trial id, so
``resume`` (``Tuner.restore``: finished trials stay finished, interrupted ones are resumed under
their own id) never makes a second run for a trial.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from prunebench.config import ExperimentConfig
from prunebench.errors import ConfigError
from prunebench.platform.ray_train import connect_checked, join_cluster_first
from prunebench.platform.study_checks import check_study
from prunebench.platform.sweep import Sweep, run_sweep
from prunebench.platform.tracking import Tracker, flatten, hardware
from prunebench.platform.trial_spec import TrialSpec
from prunebench.platform.trial_tracking import MLflowTrials, log_final
from prunebench.reports.pareto import pareto_front
from prunebench.search_spaces.loader import SearchSpace
from prunebench.training.checkpoint import code_version
from prunebench.training.protocol import load_datasets
from prunebench.validation import to_dict

@dataclass(frozen=True)
class SpaceTrials:
    """Describes study trials by the space's decoded parameters (picklable)."""

    space: SearchSpace
    seed: int

    def __call__(self, sampled: dict[str, Any]) -> TrialSpec:
        method = self.space.method
        return TrialSpec(method, method, self.space.method_params(sampled), self.seed)


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
    gpus: float | None = None,
    storage_path: str | None = None,
) -> dict[str, Any]:
    """Run (or resume) a study; return its Pareto set (AP up, objective down) and names."""
    study = check_study(space_source, config, objective, num_samples, cpus_per_trial, reports, gpus, name,
                        storage_path, resume)
    space, gpus, name, storage = study.space, study.gpus, study.name, study.storage
    if not Path(dense_checkpoint).is_file():
        raise ConfigError(f"--from {dense_checkpoint}: dense checkpoint not found")
    out = Path(config.out).resolve()
    join_cluster_first(address, gpus)
    _, valid_set = load_datasets(config)  # reads and checks the data before anything starts
    # the trials report their training loss ``reports`` times: ASHA's rungs
    steps = config.finetune.steps
    config = config.model_copy(update={"finetune": config.finetune.model_copy(update={"log_every": max(1, steps // reports)})})
    connect_checked(address, gpus)
    tracker = Tracker(tracking_uri)
    experiment_id = tracker.experiment(name)
    parent = tracker.run(experiment_id, f"study:{name}", name=name, tags={"prunebench.kind": "study", "method": space.method})
    with tracker.ending(parent):
        base = {**flatten(to_dict(config)), **hardware(), "seed": str(config.seed), "code_version": code_version(),
                "dataset_sha256": valid_set.sha256, "backbone": config.model.backbone,
                "dense_checkpoint": str(dense_checkpoint), "space": space.source, "objective": objective}
        tracker.log_params(parent, {**base, "num_samples": str(num_samples)})
        describe = SpaceTrials(space, seed)
        callback = MLflowTrials(tracking_uri, experiment_id, parent, name, describe, base,
                                {"backbone": config.model.backbone, "dataset": valid_set.sha256})
        searcher = OptunaSearch(
            metric=["AP", objective], mode=["max", "min"], seed=seed,
            sampler=optuna.samplers.NSGAIISampler(seed=seed, population_size=max(2, min(8, num_samples))),
            storage=optuna.storages.RDBStorage(f"sqlite:///{out / 'optuna.db'}"), study_name=name,
        )
        windows = -(-steps // config.finetune.log_every)
        scheduler = ASHAScheduler(metric="task_loss", mode="min", time_attr="training_iteration",
                                  max_t=windows, grace_period=max(1, windows // 2), reduction_factor=2)
        sweep = Sweep(name, describe, space.tune_space(), cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus,
                      num_samples=num_samples,
                      search_alg=searcher, scheduler=scheduler)
        grid = run_sweep(sweep, config, str(Path(dense_checkpoint).resolve()), storage, [callback], resume=resume)
        rows = []
        for result in grid:
            metrics = result.metrics or {}
            if "trial_id" in metrics:  # what a killed driver did not log yet (idempotent)
                log_final(tracker, callback.run_for(metrics["trial_id"], result.config), metrics, result.checkpoint)
            if metrics.get("evaluated"):
                rows.append({"trial_id": metrics["trial_id"], "AP": metrics["AP"], "pkr": metrics["pkr"],
                             "gmacs": metrics["gmacs"], "params": space.method_params(result.config)})
        callback.abandon_orphans({r.metrics["trial_id"] for r in grid if r.metrics and "trial_id" in r.metrics})
        best = pareto_front(rows, maximize="AP", minimize=objective)
        tracker.log_metrics(parent, {"trials": float(len(grid)), "evaluated_trials": float(len(rows)),
                                     "pareto_size": float(len(best))})
    return {"best": best, "experiment": name, "trials": len(grid), "evaluated": len(rows),
            "mlflow_experiment_id": experiment_id, "path": f"{storage}/{name}", "objective": objective}
