"""``prunebench rescore``: score the logged predictions of evaluation runs again with this version's evaluator.

Every evaluation run logs its predictions (``results.json``, the official YouTube-VIS results format)
beside its metrics. When the evaluator changes (a fixed bug, a new rule), the runs already made need
no model and no GPU to catch up: their predictions are scored again against the ground truth of the
same valid split, and the scores logged anew on each run. MLflow keeps a metric's history, so the old
value stays in it; the run's current value (what the leaderboard reads) is the new one. A score that
became undefined is logged as NaN, which the leaderboard reads as missing.

Only what the predictions and the ground truth determine is rescored: the video AP family, frame
mAP and the per-video AP of the leaderboard's paired test. What needs the model (PKR, GMACs, IoI,
FPS) is left as logged. Each rescored run is tagged ``prunebench.rescored`` with the code version.

Everything is downloaded, checked and scored before the first run is written, so a bad results file
stops the command with one line and no run half-updated.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow

from prunebench.data.ytvis import YTVISDataset
from prunebench.errors import ConfigError
from prunebench.evaluation.vis_metrics import score_results
from prunebench.platform.tracking import Tracker, numeric_metrics
from prunebench.progress import Progress
from prunebench.platform.trial import RESULTS
from prunebench.reports.leaderboard import PER_VIDEO, search_eval_runs
from prunebench.training.checkpoint import code_version

log = logging.getLogger(__name__)

RESCORED_TAG = "prunebench.rescored"
#: a change below this is the same score (the evaluator's percent values, written as floats)
TOLERANCE = 1e-9


@dataclass
class Rescored:
    """One run's new scores and how they differ from what it had logged."""

    run_id: str
    method: str
    setting: str
    seed: str
    scores: dict[str, float]
    changed: dict[str, tuple[float | None, float]]

    def summary(self) -> dict[str, Any]:
        """The run's line of the command's JSON output."""
        per_video = [k for k in self.changed if k.startswith(PER_VIDEO)]
        headline = {k: list(v) for k, v in self.changed.items() if not k.startswith(PER_VIDEO)}
        return {"run_id": self.run_id, "method": self.method, "setting": self.setting, "seed": self.seed,
                "changed": headline, "per_video_changed": len(per_video)}


def _differs(old: float | None, new: float) -> bool:
    if old is None:
        return True
    if math.isnan(old) or math.isnan(new):
        return math.isnan(old) != math.isnan(new)
    return abs(old - new) > TOLERANCE


def new_scores(logged: dict[str, float], scores: dict[str, Any]) -> dict[str, float]:
    """The numbers to log for ``scores`` (``score_results`` with per-video AP) on a run whose metrics are
    ``logged``: every defined score, and NaN for a score the run had logged that is now undefined."""
    numbers = numeric_metrics(scores)
    keys = {*scores, *(f"{PER_VIDEO}{v}" for v in scores.get("per_video_AP", {}))} - {"per_video_AP"}
    return {**{k: math.nan for k in keys if k in logged and k not in numbers}, **numbers}


def _results_of(run: Any, tracking_uri: str, folder: Path) -> Any | None:
    """The run's logged ``results.json`` (parsed), or None if it has none."""
    names = {a.path for a in mlflow.MlflowClient(tracking_uri).list_artifacts(run.info.run_id)}
    if RESULTS not in names:
        return None
    path = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=RESULTS,
                                               dst_path=str(folder / run.info.run_id), tracking_uri=tracking_uri)
    with open(path) as handle:
        return json.load(handle)


def rescore(tracking_uri: str, experiment: str, valid: YTVISDataset) -> dict[str, Any]:
    """Score every finished evaluation run of ``experiment`` on ``valid`` again (see the module docstring).
    Runs of another dataset, and runs without logged predictions, are left alone and counted.
    ConfigError: no run of ``valid`` in the experiment, or a run's predictions are malformed."""
    runs = search_eval_runs(tracking_uri, experiment)
    ours = [r for r in runs if r.data.tags.get("dataset") == valid.sha256]
    if not ours:
        found = sorted({r.data.tags.get("dataset", "?")[:12] for r in runs}) or ["no evaluation runs"]
        raise ConfigError(f"--experiment {experiment}: no evaluation run of the valid split {valid.sha256[:12]} "
                          f"(data.root {valid.root}); found datasets: {', '.join(found)}; allowed: the config and "
                          "data the runs were evaluated on")
    gt = valid.ground_truth()
    rescored, without = [], []
    scoring = Progress("rescore", len(ours), "runs", logger=log)
    with tempfile.TemporaryDirectory(prefix="prunebench-rescore-") as tmp, scoring:
        for run in ours:
            scoring.update()
            results = _results_of(run, tracking_uri, Path(tmp))
            if results is None:
                without.append(run.info.run_id)
                continue
            scores = score_results(gt, results, source=f"run {run.info.run_id} {RESULTS}", per_video=True)
            logged = run.data.metrics
            numbers = new_scores(logged, scores)
            changed = {k: (logged.get(k), v) for k, v in numbers.items() if _differs(logged.get(k), v)}
            tags = run.data.tags
            rescored.append(Rescored(run.info.run_id, tags.get("method", "?"), tags.get("setting", tags.get("target", "")),
                                     tags.get("seed", ""), numbers, changed))
    tracker = Tracker(tracking_uri)
    version = code_version()
    for item in rescored:  # every file was read and scored: now write
        tracker.log_metrics(item.run_id, item.scores)
        tracker.set_tags(item.run_id, {RESCORED_TAG: version})
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
    for r in sorted(rescored, key=lambda r: (r.method, r.setting, r.seed)):
        ap = r.changed.get("AP", (r.scores.get("AP"), r.scores.get("AP")))
        others = sum(1 for k in r.changed if k != "AP" and not k.startswith(PER_VIDEO))
        per_video = sum(1 for k in r.changed if k.startswith(PER_VIDEO))
        lines.append(f"| {r.method} | {r.setting} | {r.seed} | {r.run_id[:8]} | {_number(ap[0])} | {_number(ap[1])} "
                     f"| {others} | {per_video} |")
    return "\n".join(lines)
