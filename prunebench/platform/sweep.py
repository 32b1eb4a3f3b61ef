"""One way to run a sweep of trials on Ray Tune, shared by ``demo``, ``tune`` and ``benchmark``.

Every trial is the same function (``platform.trial.run_trial``); a sweep only says which trials
exist (a grid of ``TrialSpec`` labels, or a search space sampled by Optuna), how many CPUs each
and GPUs each takes, and where Ray stores the trials and their checkpoints (a folder or a cloud
URI). ``max_concurrent_trials`` = cluster CPUs // CPUs per trial (and GPUs // GPUs per trial), so
the cluster is filled, never oversubscribed. ``resume`` restores a sweep whose driver died (``Tuner.restore``): finished trials
stay finished, interrupted ones resume under their own id, and the MLflow callback finds their
runs again.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune.experiment import Trial

from prunebench.config import ExperimentConfig
from prunebench.platform.resume import experiment_path
from prunebench.platform.trial import trial_function
from prunebench.platform.trial_spec import Describe
from prunebench.progress import Progress
from prunebench.validation import to_dict

log = logging.getLogger(__name__)


@dataclass
class Sweep:
    """What to run: the trials (``param_space`` + ``describe``), their resources, the search."""

    name: str
    describe: Describe
    param_space: dict[str, Any]
    cpus_per_trial: int = 1
    gpus_per_trial: float = 0.0
    num_samples: int = 1
    search_alg: Any = None
    scheduler: Any = None


class TrialProgress(tune.Callback):
    """The driver's progress of a sweep: finished trials (done or failed) out of all, restored ones included."""

    def __init__(self, name: str, total: int):
        self.name, self.total = name, total
        self._progress: Progress | None = None

    def __getstate__(self) -> dict[str, Any]:  # a bar does not pickle; it is rebuilt after a restore
        return {**self.__dict__, "_progress": None}

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if self._progress is None:
            self._progress = Progress(self.name, self.total, "trials", logger=log)
        finished = sum(trial.status in (Trial.TERMINATED, Trial.ERROR) for trial in trials)
        if finished > self._progress.count:
            self._progress.update(finished - self._progress.count)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self._progress is not None:
            self._progress.close()


def trial_count(sweep: Sweep) -> int:
    """How many trials the sweep runs: ``num_samples`` times each grid point of its space."""
    grid = [len(v["grid_search"]) for v in sweep.param_space.values() if isinstance(v, dict) and "grid_search" in v]
    return sweep.num_samples * math.prod(grid)


def run_sweep(sweep: Sweep, config: ExperimentConfig, dense: str, storage: str, callbacks: list[tune.Callback],
              resume: bool = False) -> tune.ResultGrid:
    """Run (or resume) the sweep's trials; every trial fine-tunes from ``dense`` (its bytes travel through Ray's
    object store to whichever node runs the trial) and evaluates."""
    # intermediate reports carry the training windows; AP / PKR / GMACs exist only once a trial has
    # been evaluated, so Tune must not demand the searcher's metrics in every report
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    resources = {"cpu": sweep.cpus_per_trial, "gpu": sweep.gpus_per_trial}
    trainable = tune.with_resources(
        tune.with_parameters(trial_function, experiment=to_dict(config), describe=sweep.describe,
                             dense=Path(dense).read_bytes(), threads=sweep.cpus_per_trial),
        resources,
    )
    path = experiment_path(storage, sweep.name)
    if resume:
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True)
    else:
        cluster = ray.cluster_resources()
        concurrency = max(1, int(cluster.get("CPU", 1)) // sweep.cpus_per_trial)
        if sweep.gpus_per_trial > 0:
            concurrency = min(concurrency, max(1, int(cluster.get("GPU", 0) / sweep.gpus_per_trial)))
        tuner = tune.Tuner(
            trainable,
            param_space=sweep.param_space,
            tune_config=tune.TuneConfig(num_samples=sweep.num_samples, search_alg=sweep.search_alg,
                                        scheduler=sweep.scheduler, max_concurrent_trials=concurrency,
                                        reuse_actors=True),
            run_config=tune.RunConfig(name=sweep.name, storage_path=storage,
                                      callbacks=[*callbacks, TrialProgress(sweep.name, trial_count(sweep))], verbose=1),
        )
    return tuner.fit()
