"""The driver side of a sweep's trials: one MLflow child run per trial, written from what Tune hands over.

``MLflowTrials`` (a Tune callback in the driver, the one MLflow writer) logs each trial's params when
it starts, its logging windows (``train_*`` metrics with their step) as they arrive, and on completion
the final report: every metric of the evaluation, the convergence verdict, and the trial's Ray
checkpoint (weights under ``checkpoint/``, ``results.json``, ``keep_masks.png``) as artifacts. The
checkpoint is read from Ray's storage (the output folder or a cloud URI), never from a worker's disk.

A trial that ends without an evaluation (stopped early by ASHA) is tagged ``stopped_early`` and gets
``prunebench.kind = stopped``, so no leaderboard counts it. Runs are keyed by sweep and trial id:
a resumed sweep finds its runs again, and ``log_final`` is idempotent (tag ``prunebench.logged``),
so the driver can reconcile after ``Tuner.fit`` what a killed driver did not log. A trial the killed
driver had started but had not yet written into Tune's experiment state is unknown to the restored
sweep (its searcher draws that trial again under a new id): ``abandon_orphans`` tags such a run
``prunebench.kind = abandoned`` (ending it KILLED if it was running), so it is neither left RUNNING
nor counted twice.

A trial the restored sweep knows but had not recorded as finished starts again from scratch (trials
checkpoint only with their final report), and may end differently (ASHA's restored rungs can stop it).
Its run from the killed driver holds that earlier attempt (windows, perhaps even a logged evaluation),
so ``on_trial_start`` retires it (kind ``abandoned``, key ``<key>:superseded:<run id>``) and the new
attempt writes a fresh run: every counted run holds exactly the attempt the sweep's result reports.
Each driver process tags the runs it creates with its own id (``prunebench.driver``) to tell them apart.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from ray import tune

from prunebench.platform.tracking import KEY_TAG, Tracker, numeric_metrics
from prunebench.platform.trial import KEEP_MASKS, RESULTS, WEIGHTS, final_report
from prunebench.platform.trial_spec import Describe

LOGGED_TAG = "prunebench.logged"
DRIVER_TAG = "prunebench.driver"
DRIVER_ID = uuid.uuid4().hex  # this driver process; a restored callback still runs in a new one
WINDOW_KEYS = ("task_loss", "loss", "prune_loss", "keep", "lr")


def trial_run_key(sweep: str, trial_id: str) -> str:
    """The MLflow key (tag ``prunebench.key``) of a trial's run."""
    return f"trial:{sweep}:{trial_id}"


def _window(result: dict[str, Any]) -> dict[str, float]:
    """A window's metrics as MLflow names them: the training means ``train_*``, the probe's ``probe_*``."""
    means = {f"train_{k}": float(v) for k, v in result.items() if k in WINDOW_KEYS or k.startswith("keep_b")}
    return {**means, **{k: float(v) for k, v in result.items() if k.startswith("probe_")}}


def checkpoint_uri(checkpoint: tune.Checkpoint) -> str:
    """Where Ray stored a checkpoint: its path on a local storage, else a URI (``s3://bucket/...``)."""
    scheme = checkpoint.filesystem.type_name  # pyarrow's name: "local", "s3", "gcs", "hdfs"
    return f"{scheme}://{checkpoint.path}" if scheme != "local" and scheme.isalnum() else checkpoint.path


def log_final(tracker: Tracker, run: str, result: dict[str, Any], checkpoint: tune.Checkpoint | None) -> None:
    """Log a trial's final report and checkpoint once (a second call does nothing)."""
    if tracker.client.get_run(run).data.tags.get(LOGGED_TAG) == "true":
        return
    report = final_report(result)
    if report is None:
        tracker.set_tags(run, {"prunebench.kind": "stopped", "stopped_early": "true"})
    else:
        metrics, convergence = report
        tracker.log_metrics(run, _window(result), step=int(result.get("step", 0)))
        numbers = numeric_metrics({k: v for k, v in metrics.items() if k not in ("params", "frames", "seed")})
        if convergence is not None:
            numbers["converged"] = float(convergence["converged"])
            numbers.update({f"final_keep_{k}": v for k, v in convergence["final_keep"].items()})
            numbers.update({f"target_keep_{k}": v for k, v in convergence["targets"].items()})
            if convergence["loss_change"] is not None:
                numbers["loss_change"] = convergence["loss_change"]
        tracker.log_metrics(run, numbers)
        tracker.log_dict(run, metrics, "metrics.json")
        if convergence is not None:
            tracker.log_dict(run, convergence, "convergence.json")
        if checkpoint is not None:
            with checkpoint.as_directory() as folder:
                tracker.log_artifact(run, Path(folder) / WEIGHTS, "checkpoint")
                for name in (RESULTS, KEEP_MASKS):
                    tracker.log_artifact(run, Path(folder) / name)
        tracker.set_tags(run, {"stopped_early": "false",
                               "checkpoint_uri": "" if checkpoint is None else checkpoint_uri(checkpoint),
                               "converged": "" if convergence is None else str(convergence["converged"]).lower()})
    tracker.set_tags(run, {LOGGED_TAG: "true", "node_id": str(result.get("node_id", "")),
                           "resources": str(result.get("resources", ""))})
    tracker.end(run, ok=True)


class MLflowTrials(tune.Callback):
    """The driver-side MLflow writer of a sweep: one child run per trial under the sweep's parent run."""

    def __init__(self, uri: str, experiment_id: str, parent_run_id: str, sweep: str, describe: Describe,
                 base_params: dict[str, str], base_tags: dict[str, str]):
        self.uri, self.experiment_id, self.parent, self.sweep = uri, experiment_id, parent_run_id, sweep
        self.describe, self.base_params, self.base_tags = describe, base_params, base_tags
        self._tracker: Tracker | None = None

    def __getstate__(self) -> dict[str, Any]:  # the MLflow client is rebuilt after a restore
        return {**self.__dict__, "_tracker": None}

    @property
    def tracker(self) -> Tracker:
        """The MLflow writer (built lazily, also after the callback was restored)."""
        if self._tracker is None:
            self._tracker = Tracker(self.uri)
        return self._tracker

    def run_for(self, trial_id: str, config: dict[str, Any]) -> str:
        """The child run of a trial (created on first use, found again after a restore)."""
        spec = self.describe(config)
        tags = {**self.base_tags, "prunebench.kind": "eval", "prunebench.sweep": self.sweep, "trial_id": trial_id,
                "method": spec.method, "seed": str(spec.seed), DRIVER_TAG: DRIVER_ID, **spec.tags}
        return self.tracker.run(self.experiment_id, trial_run_key(self.sweep, trial_id), name=f"{spec.label}-{trial_id}",
                                parent=self.parent, tags=tags)

    def abandon_orphans(self, trial_ids: set[str]) -> list[str]:
        """After ``Tuner.fit`` and the reconciliation: mark every run of this sweep whose trial is not among the
        sweep's ``trial_ids`` as kind ``abandoned`` (ending it KILLED if it was still running), so a trial the
        restored sweep does not know is neither left RUNNING nor counted twice; returns their run ids."""
        runs = self.tracker.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`prunebench.sweep` = '{self.sweep}'")
        orphans = [r for r in runs if r.data.tags.get("trial_id") not in trial_ids and r.info.status != "FAILED"]
        for run in orphans:
            self.tracker.set_tags(run.info.run_id, {"prunebench.kind": "abandoned"})
            if run.info.status == "RUNNING":
                self.tracker.end(run.info.run_id, killed=True)
        return [run.info.run_id for run in orphans]

    def retire_earlier_attempt(self, trial_id: str) -> str | None:
        """If a previous driver wrote a run for ``trial_id`` (which now starts again from scratch), tag it
        ``abandoned`` under a superseded key (ending it KILLED if it was running); return its id."""
        key = trial_run_key(self.sweep, trial_id)
        found = self.tracker.find_run(self.experiment_id, key)
        if found is None:
            return None
        run = self.tracker.client.get_run(found)
        if run.data.tags.get(DRIVER_TAG) == DRIVER_ID:
            return None
        self.tracker.set_tags(found, {"prunebench.kind": "abandoned", KEY_TAG: f"{key}:superseded:{found}"})
        if run.info.status == "RUNNING":
            self.tracker.end(found, killed=True)
        return found

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.retire_earlier_attempt(trial.trial_id)
        spec = self.describe(trial.config)
        params = {f"method.params.{k}": json.dumps(v) for k, v in spec.params.items()}
        self.tracker.log_params(self.run_for(trial.trial_id, trial.config),
                                {**self.base_params, **params, "method": spec.method, "seed": str(spec.seed),
                                 "eval.seed": str(spec.seed)})

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if not result.get("evaluated"):
            self.tracker.log_metrics(self.run_for(trial.trial_id, trial.config), _window(result), step=int(result["step"]))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        log_final(self.tracker, self.run_for(trial.trial_id, trial.config), trial.last_result or {}, trial.checkpoint)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.tracker.end(self.run_for(trial.trial_id, trial.config), ok=False)
