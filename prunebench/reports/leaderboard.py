"""The leaderboard, from MLflow evaluation runs.

Runs are fetched once (``search_runs`` over the experiment, ``prunebench.kind = eval``, finished)
into one table; everything else works on that table. Runs of a different backbone, dataset or
precision are never averaged or compared together: each (backbone, dataset, precision) group gets its
own leaderboard, so an FPS or AP column only ever holds runs of one precision. A run's precision is its
``precision`` param (the config's); runs logged before that setting existed ran in fp32.

Two tables per group:

- **settings**: one row per method × keep setting (the points a method was fine-tuned at; a tuning
  trial is a setting of its own), mean ± std over seeds of PKR, AP, frame mAP, GMACs, FPS, IoI,
  and how many of its runs converged.
- **goals**: one row per method × goal PKR. For each seed, the method's own (measured PKR, AP)
  curve over its settings is interpolated linearly at exactly the goal; a seed whose PKRs do not
  bracket the goal gives nothing (never extrapolated), and the row has an AP@goal only if every
  seed brackets it. AP@goal is the mean over seeds with a Student-t 95 % interval; ΔAP against the
  dense model and against the ``random`` control (paired by seed) come with their intervals; a
  row is marked significantly different from VPP when the two-sided paired Student-t test over seeds
  of the mean per-video AP at the goal (each seed's mean over the validation videos both methods were
  scored on) gives p < 0.05 (``reports.statistics``). Rows whose runs did not all converge are listed
  but not ranked.
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
from prunebench.reports.statistics import (
    ALPHA,
    bracket,
    interpolate_scores,
    mean_ci,
    paired_difference_ci,
    paired_test,
)

METRICS = ("AP", "AP50", "AP75", "mAP_bbox", "mAP_segm", "pkr", "gmacs", "gmacs_dense", "fps_backbone", "fps_model",
           "ioi_all", "ioi_S", "ioi_M", "ioi_L")
PER_VIDEO = "per_video_AP_"
BLOCKS = 12
CONTROL = "random"
REFERENCE = "vpp"
#: the precision of a run logged before the setting existed
DEFAULT_PRECISION = "fp32"


@dataclass
class EvalRun:
    """One evaluation run as the reports need it."""

    run_id: str
    method: str
    setting: str
    backbone: str
    dataset: str
    seed: str
    metrics: dict[str, float]
    per_block_keep: list[float] | None
    precision: str = DEFAULT_PRECISION
    per_video: dict[str, float] = field(default_factory=dict)
    converged: bool | None = None
    final_keep: dict[str, float] = field(default_factory=dict)
    target_keep: dict[str, float] = field(default_factory=dict)
    ioi_per_block: dict[str, float] = field(default_factory=dict)  # "00".."11" -> IoI (%) at that block
    fg_precision: dict[str, float] = field(default_factory=dict)  # "00".."11" -> foreground share (%) of kept tokens
    recovery: dict[str, float] = field(default_factory=dict)  # "cut_m1", "blank_0", ... -> frame IoI (%) (scene cuts)

    @property
    def group(self) -> tuple[str, str, str]:
        """The leaderboard the run belongs to: (backbone, dataset, precision)."""
        return self.backbone, self.dataset, self.precision


def _prefixed(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    return {k[len(prefix):]: v for k, v in metrics.items() if k.startswith(prefix)}


def as_eval_run(run: Any) -> EvalRun:
    """One MLflow run as the reports read it (a metric logged as NaN, an undefined score, is missing)."""
    tags, metrics, params = run.data.tags, run.data.metrics, run.data.params
    keep = [metrics.get(f"per_block_keep_{i:02d}") for i in range(BLOCKS)]
    setting = tags.get("setting") or tags.get("target") or f"trial {run.info.run_id[:8]}"
    return EvalRun(
        run_id=run.info.run_id, method=tags.get("method", params.get("method", "?")), setting=setting,
        backbone=tags.get("backbone", params.get("backbone", "?")),
        dataset=tags.get("dataset", params.get("dataset_sha256", "?")), seed=tags.get("seed", params.get("seed", "?")),
        metrics={k: metrics[k] for k in METRICS if k in metrics and not math.isnan(metrics[k])},
        per_block_keep=None if any(v is None for v in keep) else keep,
        precision=params.get("precision", DEFAULT_PRECISION),
        per_video={k: v for k, v in _prefixed(metrics, PER_VIDEO).items() if not math.isnan(v)},
        converged=None if "converged" not in metrics else bool(metrics["converged"]),
        final_keep=_prefixed(metrics, "final_keep_"), target_keep=_prefixed(metrics, "target_keep_"),
        ioi_per_block=_prefixed(metrics, "ioi_per_block_"), fg_precision=_prefixed(metrics, "fg_precision_"),
        recovery=_prefixed(metrics, "recovery_"),
    )


def search_eval_runs(tracking_uri: str, experiment: str | None = None) -> list[Any]:
    """Every finished evaluation run (MLflow ``Run``) of ``experiment`` (all experiments if None), fetched in
    pages. ConfigError naming the experiments found if ``experiment`` does not exist."""
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
    return runs


def fetch_runs(tracking_uri: str, experiment: str | None = None) -> list[EvalRun]:
    """Every finished evaluation run of ``experiment`` (all experiments if None), as the reports need it."""
    return [as_eval_run(r) for r in search_eval_runs(tracking_uri, experiment)]


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def converged_runs(runs: Sequence[EvalRun]) -> str | None:
    """``k/n``: k of the ``runs`` converged, n counting every run (a run without a verdict among judged ones
    has not been shown to converge); None when no run carries a verdict."""
    if all(r.converged is None for r in runs):
        return None
    return f"{sum(r.converged is True for r in runs)}/{len(runs)}"


@dataclass
class SettingRow:
    """A method at one keep setting, over its seeds (or the dense model)."""

    method: str
    setting: str
    runs: list[EvalRun]
    mean: dict[str, float | None] = field(default_factory=dict)
    std: dict[str, float | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key in METRICS:
            self.mean[key], self.std[key] = _mean_std([r.metrics[key] for r in self.runs if key in r.metrics])

    @property
    def seeds(self) -> int:
        """How many runs (seeds) the row averages."""
        return len(self.runs)

    @property
    def converged(self) -> str:
        """``k/n`` of the runs converged (``–`` when none carries a verdict, e.g. the dense model)."""
        return converged_runs(self.runs) or "–"

    def as_dict(self) -> dict[str, Any]:
        """Flat record for tables and Parquet."""
        record: dict[str, Any] = {"method": self.method, "setting": self.setting, "seeds": self.seeds,
                                  "converged": self.converged}
        for key in METRICS:
            record[key] = self.mean.get(key)
            record[f"{key}_std"] = self.std.get(key)
        return record


@dataclass
class SeedPoint:
    """A method's value at a goal for one seed, and the runs it was interpolated from."""

    ap: float
    per_video: dict[str, float]
    runs: list[EvalRun]


@dataclass
class GoalRow:
    """A method at one goal PKR: AP@goal over seeds, its intervals and tests (``as_dict``: the JSON contract)."""

    method: str
    goal: float
    seeds: dict[str, SeedPoint]  # only when every seed brackets the goal
    total_seeds: int
    nearest: SettingRow | None
    ap_at_goal: float | None = None
    ap_ci: tuple[float, float] | None = None
    delta_ap_dense: float | None = None
    delta_ap_dense_ci: tuple[float, float] | None = None
    delta_ap_random: float | None = None
    delta_ap_random_ci: tuple[float, float] | None = None
    p_vs_vpp: float | None = None
    rank: int | None = None

    @property
    def bracketed(self) -> bool:
        """Every seed's measured PKRs enclose the goal."""
        return bool(self.seeds) and len(self.seeds) == self.total_seeds

    @property
    def used_runs(self) -> list[EvalRun]:
        """The runs the AP@goal was interpolated from."""
        return [r for point in self.seeds.values() for r in point.runs]

    @property
    def converged(self) -> bool | None:
        """All runs behind the AP@goal converged (None: no run carries a verdict). A run without a verdict
        among judged ones has not been shown to converge: the row is not converged."""
        verdicts = [r.converged for r in self.used_runs]
        if all(v is None for v in verdicts):
            return None
        return all(v is True for v in verdicts)

    @property
    def significant_vs_vpp(self) -> bool | None:
        """p < 0.05 in the paired test against VPP (None: not tested)."""
        return None if self.p_vs_vpp is None else self.p_vs_vpp < ALPHA

    def pkr_bracket(self) -> list[float] | None:
        """Mean measured PKR of the runs behind AP@goal below and above the goal (or of the nearest setting)."""
        runs = self.used_runs
        below = [r.metrics["pkr"] for r in runs if r.metrics["pkr"] <= self.goal]
        above = [r.metrics["pkr"] for r in runs if r.metrics["pkr"] > self.goal]
        if below and above:
            return [statistics.fmean(below), statistics.fmean(above)]
        nearest = self.nearest.mean.get("pkr") if self.nearest else None
        return None if nearest is None else [nearest]

    def as_dict(self) -> dict[str, Any]:
        """The leaderboard row of the JSON contract (plus the intervals and p-value)."""
        return {
            "method": self.method, "goal_pkr": self.goal, "rank": self.rank, "ap_at_goal": self.ap_at_goal,
            "ap_ci": None if self.ap_ci is None else list(self.ap_ci), "delta_ap_dense": self.delta_ap_dense,
            "delta_ap_dense_ci": None if self.delta_ap_dense_ci is None else list(self.delta_ap_dense_ci),
            "delta_ap_random": self.delta_ap_random,
            "delta_ap_random_ci": None if self.delta_ap_random_ci is None else list(self.delta_ap_random_ci),
            "p_vs_vpp": self.p_vs_vpp, "significant_vs_vpp": self.significant_vs_vpp, "converged": self.converged,
            "converged_runs": converged_runs(self.used_runs), "seeds": self.total_seeds,
            "bracketed": self.bracketed, "pkr": self.pkr_bracket(),
            "ap_nearest": None if self.nearest is None else self.nearest.mean.get("AP"),
            "setting_nearest": None if self.nearest is None else self.nearest.setting,
        }


@dataclass
class Leaderboard:
    """Tables of one (backbone, dataset, precision) group."""

    backbone: str
    dataset: str
    precision: str
    dense: SettingRow
    settings: list[SettingRow]
    goals: list[GoalRow]

    @property
    def group(self) -> tuple[str, str, str]:
        """What its runs share: (backbone, dataset, precision)."""
        return self.backbone, self.dataset, self.precision

    def describe(self) -> str:
        """The group in words, as headings and messages name it."""
        return f"{self.backbone} · dataset {self.dataset[:12]} · {self.precision}"

    def nearest(self, method: str, goal: float) -> SettingRow | None:
        """The method's setting whose mean measured PKR is nearest ``goal``."""
        return nearest_setting(self.settings, method, goal)


def nearest_setting(settings: list[SettingRow], method: str, goal: float) -> SettingRow | None:
    """Among ``settings``, the method's one whose mean measured PKR is nearest ``goal`` (None if it has none)."""
    own = [s for s in settings if s.method == method and s.mean.get("pkr") is not None]
    return min(own, key=lambda s: abs(s.mean["pkr"] - goal), default=None)


def _seed_point(runs: list[EvalRun], goal: float) -> SeedPoint | None:
    points = [r for r in runs if "pkr" in r.metrics and "AP" in r.metrics]
    found = bracket([r.metrics["pkr"] for r in points], goal)
    if found is None:
        return None
    low, high, weight = found
    pkrs = [r.metrics["pkr"] for r in points]
    at_low = [r for r in points if r.metrics["pkr"] == pkrs[low]]
    at_high = [r for r in points if r.metrics["pkr"] == pkrs[high]]
    ap = (1 - weight) * statistics.fmean(r.metrics["AP"] for r in at_low) + weight * statistics.fmean(
        r.metrics["AP"] for r in at_high)
    per_video = interpolate_scores(pkrs, [r.per_video for r in points], goal) or {}
    used = (at_low if weight < 1 else []) + (at_high if weight > 0 and high != low else [])
    return SeedPoint(ap, per_video, used)


def _goal_row(method: str, goal: float, runs: list[EvalRun], settings: list[SettingRow], dense_ap: float | None) -> GoalRow:
    by_seed: dict[str, list[EvalRun]] = defaultdict(list)
    for run in runs:
        by_seed[run.seed].append(run)
    points = {seed: _seed_point(seed_runs, goal) for seed, seed_runs in by_seed.items()}
    row = GoalRow(method, goal, {s: p for s, p in points.items() if p is not None}, len(by_seed),
                  nearest_setting(settings, method, goal))
    if row.bracketed:
        values = [p.ap for p in row.seeds.values()]
        row.ap_at_goal, row.ap_ci = mean_ci(values)
        if dense_ap is not None:
            row.delta_ap_dense, row.delta_ap_dense_ci = mean_ci([v - dense_ap for v in values])
    return row


def _compare(rows: list[GoalRow]) -> None:
    """ΔAP against the random control and the paired test against VPP, both paired by seed."""
    by_method = {r.method: r for r in rows}
    control, reference = by_method.get(CONTROL), by_method.get(REFERENCE)
    for row in rows:
        if not row.bracketed:
            continue
        if control is not None and control.bracketed and row.method != CONTROL:
            seeds = sorted(set(row.seeds) & set(control.seeds))
            if seeds:
                row.delta_ap_random, row.delta_ap_random_ci = paired_difference_ci(
                    [row.seeds[s].ap for s in seeds], [control.seeds[s].ap for s in seeds])
        if reference is not None and reference.bracketed and row.method != REFERENCE:
            pairs = [_video_means(row.seeds[s].per_video, reference.seeds[s].per_video)
                     for s in sorted(set(row.seeds) & set(reference.seeds))]
            pairs = [pair for pair in pairs if pair is not None]
            if pairs:
                row.p_vs_vpp = paired_test([a for a, _ in pairs], [b for _, b in pairs])


def _video_means(ours: dict[str, float], theirs: dict[str, float]) -> tuple[float, float] | None:
    """Both methods' mean per-video AP over the videos both were scored on (None: no shared video)."""
    videos = sorted(set(ours) & set(theirs))
    if not videos:
        return None
    return statistics.fmean(ours[v] for v in videos), statistics.fmean(theirs[v] for v in videos)


def _rank(rows: list[GoalRow]) -> list[GoalRow]:
    """Converged rows with an AP@goal ranked by it; the others listed after them, unranked.

    Rows whose AP@goal prints the same (one decimal) share a rank, and the next rank skips as many
    (1, 2, 2, 4): an order the table cannot show is not claimed.
    """
    ranked = sorted((r for r in rows if r.converged and r.ap_at_goal is not None), key=lambda r: -r.ap_at_goal)
    for row in ranked:
        shown = round(row.ap_at_goal, 1)
        row.rank = 1 + sum(round(other.ap_at_goal, 1) > shown for other in ranked)
    rest = sorted((r for r in rows if r.rank is None), key=lambda r: (r.ap_at_goal is None, -(r.ap_at_goal or 0.0)))
    return ranked + rest


def build_leaderboards(runs: list[EvalRun], goals: Sequence[float] = (0.55, 0.40)) -> list[Leaderboard]:
    """One leaderboard per (backbone, dataset, precision); ConfigError if there is nothing to rank."""
    if not runs:
        raise ConfigError("no finished evaluation runs (tag prunebench.kind = eval) in the selected MLflow experiment(s)")
    groups: dict[tuple[str, str, str], list[EvalRun]] = defaultdict(list)
    for run in runs:
        groups[run.group].append(run)
    boards = []
    for (backbone, dataset, precision), members in sorted(groups.items()):
        dense_runs = [r for r in members if r.method == "dense"]
        if not dense_runs:
            raise ConfigError(f"backbone {backbone}, dataset {dataset[:12]}, precision {precision}: no dense baseline "
                              f"run; evaluate the dense checkpoint (prunebench eval --set precision={precision}) "
                              "before reporting")
        dense = SettingRow("dense", "dense", dense_runs)
        cells: dict[tuple[str, str], list[EvalRun]] = defaultdict(list)
        for run in members:
            if run.method != "dense":
                cells[run.method, run.setting].append(run)
        settings = [SettingRow(m, s, cell) for (m, s), cell in sorted(cells.items())]
        methods = sorted({r.method for r in members if r.method != "dense"})
        goal_rows = []
        for goal in goals:
            rows = [_goal_row(m, goal, [r for r in members if r.method == m], settings, dense.mean.get("AP"))
                    for m in methods]
            _compare(rows)
            goal_rows += _rank(rows)
        boards.append(Leaderboard(backbone, dataset, precision, dense, settings, goal_rows))
    return boards


def _fmt(mean: float | None, std: float | None = None, digits: int = 1) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    text = f"{mean:.{digits}f}"
    return f"{text} ± {std:.{digits}f}" if std is not None else text


def _ci(value: float | None, interval: tuple[float, float] | None, signed: bool = False) -> str:
    if value is None:
        return "–"
    text = f"{value:+.1f}" if signed else f"{value:.1f}"
    return text if interval is None else f"{text} [{interval[0]:.1f}, {interval[1]:.1f}]"


def _p_value(p: float) -> str:
    """A p-value as the table prints it: three decimals, or the bound below 0.001."""
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _goal_line(row: GoalRow) -> str:
    if not row.bracketed:
        ap = "not bracketed"
    else:
        ap = _ci(row.ap_at_goal, row.ap_ci)
    test = "–" if row.p_vs_vpp is None else f"{'**yes**' if row.significant_vs_vpp else 'no'} (p {_p_value(row.p_vs_vpp)})"
    conv = row.as_dict()["converged_runs"] or "–"
    if row.converged is False:
        conv = f"**no** ({conv})"
    pkr = row.pkr_bracket()
    pkr_text = "–" if pkr is None else " / ".join(f"{100 * p:.1f}" for p in pkr)
    nearest = "–" if row.nearest is None else f"{_fmt(row.nearest.mean.get('AP'))} @ {_fmt(100 * row.nearest.mean['pkr'])}"
    return (f"| {row.rank or '–'} | {row.method} | {ap} | {_ci(row.delta_ap_dense, row.delta_ap_dense_ci, True)} "
            f"| {_ci(row.delta_ap_random, row.delta_ap_random_ci, True)} | {test} | {conv} | {row.total_seeds} "
            f"| {pkr_text} | {nearest} |")


def markdown(boards: list[Leaderboard]) -> str:
    """The leaderboards: AP at each goal PKR with intervals and tests, then every setting (percent, GMACs per frame)."""
    parts = []
    for board in boards:
        dense = board.dense
        parts.append(f"### {board.describe()}\n")
        parts.append(f"Dense model: AP {_fmt(dense.mean.get('AP'), dense.std.get('AP'))}, "
                     f"AP^bbox {_fmt(dense.mean.get('mAP_bbox'))}, AP^segm {_fmt(dense.mean.get('mAP_segm'))}, "
                     f"GMACs {_fmt(dense.mean.get('gmacs'), digits=3)}, FPS {_fmt(dense.mean.get('fps_model'))} "
                     f"({dense.seeds} run{'s' if dense.seeds > 1 else ''}).\n")
        for goal in sorted({r.goal for r in board.goals}, reverse=True):
            parts.append(f"**Goal PKR {100 * goal:.0f} %**\n")
            parts.append("| rank | method | AP@goal [95 % CI] | ΔAP vs dense [CI] | ΔAP vs random [CI] | differs from VPP "
                         "| converged | seeds | PKR % below / above | AP @ PKR % of nearest setting |")
            parts.append("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
            parts += [_goal_line(r) for r in board.goals if r.goal == goal]
            parts.append("")
        parts.append("**Every setting** (mean ± std over seeds)\n")
        parts.append("| method | setting | seeds | PKR % | AP | AP^bbox | AP^segm | IoI | GMACs | FPS | converged |")
        parts.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for row in [dense, *board.settings]:
            m, s = row.mean, row.std
            pkr = None if m.get("pkr") is None else 100 * m["pkr"]
            pkr_std = None if s.get("pkr") is None else 100 * s["pkr"]
            parts.append(
                f"| {row.method} | {row.setting} | {row.seeds} | {_fmt(pkr, pkr_std)} | {_fmt(m.get('AP'), s.get('AP'))} "
                f"| {_fmt(m.get('mAP_bbox'), s.get('mAP_bbox'))} | {_fmt(m.get('mAP_segm'), s.get('mAP_segm'))} "
                f"| {_fmt(m.get('ioi_all'))} | {_fmt(m.get('gmacs'), s.get('gmacs'), 3)} "
                f"| {_fmt(m.get('fps_model'), s.get('fps_model'))} | {row.converged} |")
        parts.append("")
    parts.append(
        "AP-like values in percent; PKR = mean fraction of tokens entering each of the 12 blocks; GMACs = backbone "
        "multiply-accumulates per frame (GFLOPs = 2 x GMACs); FPS = whole model, batch 1. AP@goal: each seed's "
        "(PKR, AP) curve interpolated at the goal (never extrapolated), mean over seeds with a Student-t 95 % CI; "
        "ΔAP vs random paired by seed; 'differs from VPP': two-sided paired Student-t test over seeds of the mean "
        "per-video AP at the goal (the videos averaged within each seed), p < 0.05. A seed sets the fine-tuning clip order, the selectors' "
        "initialisation and training noise, and the selectors' noise at inference. Rows whose runs did not all "
        "converge (or logged no verdict) are not ranked; rows whose AP@goal prints the same share a rank.")
    return "\n".join(parts)
