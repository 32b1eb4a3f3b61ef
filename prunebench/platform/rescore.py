"""``prunebench rescore``: score the logged predictions of evaluation runs again with this version's evaluator.

Every evaluation run logs its predictions (``results.json``, the official YouTube-VIS results format)
beside its metrics. When the evaluator changes (a fixed bug, a new rule), the runs already made need
no model and no GPU to catch up: their predictions are scored again against the ground truth of the
same valid split, and the scores that changed are logged anew on each run. MLflow keeps a metric's
history, so the old value stays in it; the run's current value (what the leaderboard reads) is the new
one, which is read back to make sure. A score that became undefined is logged as NaN, which the
leaderboard reads as missing.

Only what the predictions and the ground truth determine is rescored: the video AP family, frame
mAP and the per-video AP of the leaderboard's paired test. What needs the model (PKR, GMACs, IoI,
FPS) is left as logged. Each rescored run is tagged ``prunebench.rescored`` with the code version,
after its scores.

Everything is downloaded, checked and scored before the first run is written, so a bad results file
stops the command with one line and no run updated. (A store that fails while the scores are being
written leaves the runs before it updated and the rest as they were; a second ``rescore`` finishes
the job and changes nothing twice.)
"""

from __future__ import annotations

import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunebench.data.ytvis import YTVISDataset
from prunebench.errors import ConfigError
from prunebench.evaluation.vis_metrics import load_results, score_results
from prunebench.platform.tracking import Tracker, download, numeric_metrics
from prunebench.platform.trial import RESULTS
from prunebench.progress import Progress
from prunebench.reports.leaderboard import PER_VIDEO, EvalRun, as_eval_run, search_eval_runs
from prunebench.training.checkpoint import code_version

log = logging.getLogger(__name__)

RESCORED_TAG = "prunebench.rescored"
#: a change below this is the same score (the evaluator's percent values, written as floats)
TOLERANCE = 1e-9


@dataclass
class Rescored:
    """One run's new scores and those that differ from what it had logged (``key -> (logged, new)``)."""

    run: EvalRun
    changed: dict[str, tuple[float | None, float]]
    ap: float | None

    @property
    def headline(self) -> dict[str, tuple[float | None, float]]:
        """The changed scores other than per-video AP."""
        return {k: v for k, v in self.changed.items() if not k.startswith(PER_VIDEO)}

    @property
    def per_video_changed(self) -> int:
        """How many per-video APs changed."""
        return len(self.changed) - len(self.headline)

    def summary(self) -> dict[str, Any]:
        """The run's line of the command's JSON output (NaN, an undefined score, as null)."""
        headline = {k: [_json_number(old), _json_number(new)] for k, (old, new) in self.headline.items()}
        return {"run_id": self.run.run_id, "method": self.run.method, "setting": self.run.setting,
                "seed": self.run.seed, "changed": headline, "per_video_changed": self.per_video_changed}


def _json_number(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else value


def _differs(old: float | None, new: float) -> bool:
    if old is None:
        return True
    if math.isnan(old) or math.isnan(new):
        return math.isnan(old) != math.isnan(new)
    return abs(old - new) > TOLERANCE


def new_scores(logged: dict[str, float], scores: dict[str, Any]) -> dict[str, float]:
    """The numbers ``scores`` (``score_results`` with per-video AP) give a run whose metrics are ``logged``: every
    defined score, and NaN for a score the run had logged that is now undefined."""
    numbers = numeric_metrics(scores)
    keys = {*scores, *(f"{PER_VIDEO}{v}" for v in scores.get("per_video_AP", {}))} - {"per_video_AP"}
    return {**{k: math.nan for k in keys if k in logged and k not in numbers}, **numbers}


def changed_scores(logged: dict[str, float], scores: dict[str, Any]) -> dict[str, tuple[float | None, float]]:
    """``key -> (logged value or None, new value)`` for every score of ``new_scores`` that differs from the run's."""
    return {k: (logged.get(k), v) for k, v in new_scores(logged, scores).items() if _differs(logged.get(k), v)}


def _has_results(run_id: str, tracker: Tracker) -> bool:
    """Whether the run lists ``results.json`` among its artifacts."""
    return RESULTS in {a.path for a in tracker.client.list_artifacts(run_id)}


def _results_of(run_id: str, tracker: Tracker, folder: Path) -> Any:
    """The run's logged ``results.json``, downloaded into ``folder`` and parsed (one-line ConfigError otherwise)."""
    target = folder / run_id
    download(f"runs:/{run_id}/{RESULTS}", target, tracker.uri, f"run {run_id} {RESULTS}")
    return load_results(target / RESULTS)


def _write(tracker: Tracker, item: Rescored, version: str) -> None:
    """Log the changed scores on the run, check that MLflow now reports them, tag the run."""
    new = {k: v for k, (_, v) in item.changed.items()}
    tracker.log_metrics(item.run.run_id, new)
    current = tracker.client.get_run(item.run.run_id).data.metrics
    stale = sorted(k for k, v in new.items() if _differs(current.get(k), v))
    if stale:  # MLflow reports the value of the latest timestamp: a run logged by a clock ahead of this one
        raise ConfigError(f"run {item.run.run_id}: MLflow still reports the logged {', '.join(stale[:3])} after "
                          "the rescore (the run's values carry later timestamps than this machine's clock)")
    tracker.set_tags(item.run.run_id, {RESCORED_TAG: version})


def rescore(tracking_uri: str, experiment: str, valid: YTVISDataset) -> dict[str, Any]:
    """Score every finished evaluation run of ``experiment`` on ``valid`` again (see the module docstring).
    Runs of another dataset, and runs without logged predictions, are left alone, counted and named.
    ConfigError: no run of ``valid`` in the experiment, none of them with predictions, or a run's predictions
    that cannot be downloaded or are malformed."""
    runs = [(r, as_eval_run(r)) for r in search_eval_runs(tracking_uri, experiment)]
    ours = [(raw, run) for raw, run in runs if run.dataset == valid.sha256]
    if not ours:
        found = sorted({run.dataset[:12] for _, run in runs}) or ["no evaluation runs"]
        raise ConfigError(f"--experiment {experiment}: no evaluation run of the valid split {valid.sha256[:12]} "
                          f"(data.root {valid.root}); found datasets: {', '.join(found)}; allowed: the config and "
                          "data the runs were evaluated on")
    tracker = Tracker(tracking_uri)
    listed = {run.run_id: _has_results(run.run_id, tracker) for _, run in ours}
    scored = [(raw, run) for raw, run in ours if listed[run.run_id]]
    without = [run_id for run_id, has in listed.items() if not has]
    if not scored:
        raise ConfigError(f"--experiment {experiment}: none of its {len(ours)} evaluation runs of this valid split "
                          f"lists {RESULTS} among its artifacts (artifact location of one: {ours[0][0].info.artifact_uri}); "
                          "allowed: runs whose artifacts this machine can read")
    gt = valid.ground_truth()
    rescored = []
    scoring = Progress("rescore", len(scored), "runs", logger=log)
    with tempfile.TemporaryDirectory(prefix="prunebench-rescore-") as tmp, scoring:
        for raw, run in scored:
            scores = score_results(gt, _results_of(run.run_id, tracker, Path(tmp)),
                                   source=f"run {run.run_id} {RESULTS}", per_video=True)
            rescored.append(Rescored(run, changed_scores(raw.data.metrics, scores), scores["AP"]))
            scoring.update()
    if without:
        log.warning("%d runs without %s left as logged: %s", len(without), RESULTS, ", ".join(without))
    version = code_version()
    for item in rescored:  # every file was read and scored: now write
        _write(tracker, item, version)
    log.info("rescored %d runs (%d changed), %d without logged predictions, %d of other datasets", len(rescored),
             sum(bool(r.changed) for r in rescored), len(without), len(runs) - len(ours))
    return {"experiment": experiment, "dataset_sha256": valid.sha256, "code_version": version,
            "rescored": [r.summary() for r in rescored], "without_results": without,
            "other_datasets": len(runs) - len(ours), "table": _table(rescored)}


def _number(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.2f}"


def _table(rescored: list[Rescored]) -> str:
    """The human view: one line per run, sorted by method, setting and seed."""
    lines = ["| method | setting | seed | run | AP logged | AP now | other scores changed | per-video AP changed |",
             "|---|---|---|---|---:|---:|---:|---:|"]
    for r in sorted(rescored, key=lambda r: (r.run.method, r.run.setting, r.run.seed)):
        logged = r.changed["AP"][0] if "AP" in r.changed else r.ap
        others = len(r.headline) - ("AP" in r.headline)
        lines.append(f"| {r.run.method} | {r.run.setting} | {r.run.seed} | {r.run.run_id[:8]} | {_number(logged)} "
                     f"| {_number(r.ap)} | {others} | {r.per_video_changed} |")
    return "\n".join(lines)
