"""The leaderboard, from MLflow evaluation runs.

Runs are fetched once (``search_runs`` over the experiment, filtered to ``prunebench.kind = eval``)
into one table; everything else works on that table. Groups of runs with a different backbone or
dataset are never averaged together: each (backbone, dataset) group gets its own leaderboard.

Each row is one method at one PKR target bucket (55 %, 40 % by default): runs tagged with a target
go to that bucket; runs without one (tuning trials) go to the bucket whose target is within
``tolerance`` of their measured PKR. Several runs in a row (seeds) give mean ± std. ΔAP is against
the group's dense model. ``AP@target`` is the AP of the method's Pareto front (AP up, PKR down,
over all its runs in the group) linearly interpolated at exactly the target PKR, so methods that miss
the target are compared fairly; it is None outside the front's PKR range.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mlflow.tracking import MlflowClient

from prunebench.errors import ConfigError
from prunebench.reports.pareto import pareto_front

METRICS = ("AP", "AP50", "AP75", "mAP_bbox", "mAP_segm", "pkr", "gmacs", "gmacs_dense", "fps_backbone", "fps_model",
           "ioi_all", "ioi_S", "ioi_M", "ioi_L")
BLOCKS = 12


@dataclass
class EvalRun:
    """One evaluation run as the reports need it."""

    run_id: str
    method: str
    target: float | None
    backbone: str
    dataset: str
    seed: str
    metrics: dict[str, float]
    per_block_keep: list[float] | None


def fetch_runs(tracking_uri: str, experiment: str | None = None) -> list[EvalRun]:
    """Every evaluation run of ``experiment`` (all experiments if None), fetched in pages."""
    client = MlflowClient(tracking_uri)
    experiments = client.search_experiments()
    if experiment is not None:
        experiments = [e for e in experiments if e.name == experiment]
        if not experiments:
            names = ", ".join(sorted(e.name for e in client.search_experiments())) or "none"
            raise ConfigError(f"--experiment {experiment}: no such MLflow experiment; found: {names}")
    ids = [e.experiment_id for e in experiments]
    runs, token = [], None
    while ids:
        page = client.search_runs(ids, filter_string="tags.`prunebench.kind` = 'eval' and attributes.status = 'FINISHED'",
                                  max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            break
    out = []
    for run in runs:
        tags, metrics = run.data.tags, run.data.metrics
        keep = [metrics.get(f"per_block_keep_{i:02d}") for i in range(BLOCKS)]
        target = tags.get("target") or ""
        out.append(EvalRun(
            run_id=run.info.run_id, method=tags.get("method", run.data.params.get("method", "?")),
            target=float(target) if target else None, backbone=tags.get("backbone", run.data.params.get("backbone", "?")),
            dataset=tags.get("dataset", run.data.params.get("dataset_sha256", "?")),
            seed=run.data.params.get("seed", "?") + "/" + run.data.params.get("eval.seed", "0"),
            metrics={k: metrics[k] for k in METRICS if k in metrics},
            per_block_keep=None if any(v is None for v in keep) else keep,
        ))
    return out


@dataclass
class Row:
    """One leaderboard row: a method at a target bucket (or the dense model)."""

    backbone: str
    dataset: str
    method: str
    target: float | None
    runs: list[EvalRun]
    mean: dict[str, float | None] = field(default_factory=dict)
    std: dict[str, float | None] = field(default_factory=dict)
    delta_ap: float | None = None
    ap_at_target: float | None = None

    @property
    def seeds(self) -> int:
        """How many runs (seeds) the row averages."""
        return len(self.runs)

    def as_dict(self) -> dict[str, Any]:
        """Flat record for tables and Parquet."""
        record: dict[str, Any] = {"backbone": self.backbone, "dataset": self.dataset, "method": self.method,
                                  "target": self.target, "seeds": self.seeds}
        for key in METRICS:
            record[key] = self.mean.get(key)
            record[f"{key}_std"] = self.std.get(key)
        record["delta_AP"] = self.delta_ap
        record["AP_at_target"] = self.ap_at_target
        return record


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def interpolate_at(front: Sequence[dict[str, Any]], target: float) -> float | None:
    """AP of a front (sorted by PKR) linearly interpolated at PKR = ``target``; None outside it."""
    points = sorted((r["pkr"], r["AP"]) for r in front)
    if not points or not points[0][0] - 1e-9 <= target <= points[-1][0] + 1e-9:
        return None
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= target <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (target - x0) / (x1 - x0)
    return points[0][1]


@dataclass
class Leaderboard:
    """Rows of one (backbone, dataset) group, dense first, then method × target."""

    backbone: str
    dataset: str
    rows: list[Row]


def _bucket(run: EvalRun, targets: Sequence[float], tolerance: float) -> float | None:
    if run.method == "dense":
        return None
    if run.target is not None:
        return next((t for t in targets if abs(t - run.target) < 1e-6), None)
    pkr = run.metrics.get("pkr")
    if pkr is None:
        return None
    nearest = min(targets, key=lambda t: abs(t - pkr))
    return nearest if abs(nearest - pkr) <= tolerance else None


def build_leaderboards(runs: list[EvalRun], targets: Sequence[float] = (0.55, 0.40),
                       tolerance: float = 0.05) -> list[Leaderboard]:
    """One leaderboard per (backbone, dataset); ConfigError if there is nothing to rank."""
    if not runs:
        raise ConfigError("no finished evaluation runs (tag prunebench.kind = eval) in the selected MLflow experiment(s)")
    groups: dict[tuple[str, str], list[EvalRun]] = defaultdict(list)
    for run in runs:
        groups[run.backbone, run.dataset].append(run)
    boards = []
    for (backbone, dataset), members in sorted(groups.items()):
        dense = [r for r in members if r.method == "dense"]
        if not dense:
            raise ConfigError(f"backbone {backbone}, dataset {dataset[:12]}: no dense baseline run; "
                              "evaluate the dense checkpoint (prunebench eval) before reporting")
        cells: dict[tuple[str, float | None], list[EvalRun]] = defaultdict(list)
        for run in members:
            bucket = _bucket(run, targets, tolerance)
            if run.method == "dense" or bucket is not None:
                cells[run.method, bucket].append(run)
        rows = []
        for (method, target), cell in cells.items():
            row = Row(backbone, dataset, method, target, cell)
            for key in METRICS:
                row.mean[key], row.std[key] = _mean_std([r.metrics[key] for r in cell if key in r.metrics])
            rows.append(row)
        dense_ap = next(r for r in rows if r.method == "dense").mean.get("AP")
        for row in rows:
            if row.method != "dense" and dense_ap is not None and row.mean.get("AP") is not None:
                row.delta_ap = row.mean["AP"] - dense_ap
            if row.target is not None:
                points = [{"pkr": r.metrics["pkr"], "AP": r.metrics["AP"]} for r in members
                          if r.method == row.method and "pkr" in r.metrics and "AP" in r.metrics]
                row.ap_at_target = interpolate_at(pareto_front(points, maximize="AP", minimize="pkr"), row.target)
        rows.sort(key=lambda r: (r.method != "dense", -(r.target or 2.0), r.method))
        boards.append(Leaderboard(backbone, dataset, rows))
    return boards


def _fmt(mean: float | None, std: float | None = None, digits: int = 1) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    text = f"{mean:.{digits}f}"
    return f"{text} ± {std:.{digits}f}" if std is not None else text


def markdown(boards: list[Leaderboard]) -> str:
    """The leaderboards in the layout of the paper's Table 2 (percent, PKR in %, GMACs per frame)."""
    parts = []
    for board in boards:
        parts.append(f"### {board.backbone} · dataset {board.dataset[:12]}\n")
        parts.append("| method | goal PKR | PKR % | AP^bbox | AP^segm | AP | ΔAP | AP@goal | GMACs | FPS | seeds |")
        parts.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for row in board.rows:
            m, s = row.mean, row.std
            pkr = None if m.get("pkr") is None else 100 * m["pkr"]
            pkr_std = None if s.get("pkr") is None else 100 * s["pkr"]
            goal = "100" if row.method == "dense" else f"{100 * row.target:.0f}"
            parts.append(
                f"| {row.method} | {goal} | {_fmt(pkr, pkr_std)} | {_fmt(m.get('mAP_bbox'), s.get('mAP_bbox'))} "
                f"| {_fmt(m.get('mAP_segm'), s.get('mAP_segm'))} | {_fmt(m.get('AP'), s.get('AP'))} "
                f"| {'–' if row.delta_ap is None else f'{row.delta_ap:+.1f}'} | {_fmt(row.ap_at_target)} "
                f"| {_fmt(m.get('gmacs'), s.get('gmacs'), 3)} | {_fmt(m.get('fps_model'), s.get('fps_model'))} | {row.seeds} |")
        parts.append("")
    parts.append("AP-like values in percent; PKR = mean fraction of tokens entering each of the 12 blocks; GMACs = "
                 "backbone multiply-accumulates per frame (GFLOPs = 2 x GMACs); FPS = whole model, batch 1; "
                 "mean ± std over seeds; AP@goal = AP of the method's Pareto front interpolated at the goal PKR.")
    return "\n".join(parts)
