"""``prunebench report``: leaderboard, Pareto fronts, density plot, IoI table, HTML, from MLflow.

Files (all written atomically into ``--out``): ``leaderboard.md``, ``leaderboard.parquet``,
``pareto_pkr.png``, ``pareto_gmacs.png``, ``pareto_fps.png``, ``density.png``, ``learning_curves.png``,
``scene_cuts.png`` (when the runs measured scene-cut recovery), ``report.html`` (one
self-contained file: tables and figures inline as base64 PNGs, readable without a server).

Pareto fronts are per method over all its evaluation runs of a (backbone, dataset, precision) group: AP up
against PKR down, GMACs down or FPS up; the dense model is marked. Each front's hypervolume is
the area it dominates above AP = 0 and below the reference cost: PKR 1.0, the dense model's
GMACs, or (for FPS, as cost −FPS) FPS 0; in AP-percent × cost units.
"""

from __future__ import annotations

import base64
import html
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from prunebench.atomic import atomic_path, write_bytes  # noqa: E402
from prunebench.reports.curves import learning_curves_figure  # noqa: E402
from prunebench.reports.leaderboard import (  # noqa: E402
    BLOCKS,
    EvalRun,
    Leaderboard,
    build_leaderboards,
    fetch_runs,
    markdown,
)
from prunebench.reports.pareto import hypervolume, pareto_front  # noqa: E402
from prunebench.reports.recovery import recovery_figure, recovery_table  # noqa: E402
from prunebench.reports.style import method_color, png_bytes  # noqa: E402

AXES = {  # name -> (metric, axis label, lower is better)
    "pkr": ("pkr", "PKR (fraction of tokens)", True),
    "gmacs": ("gmacs", "backbone GMACs per frame", True),
    "fps": ("fps_model", "FPS (whole model, batch 1)", False),
}


def method_fronts(board_runs: list[EvalRun], axis: str) -> dict[str, dict[str, Any]]:
    """Per method: all points, the Pareto front and its hypervolume for ``axis``."""
    metric, _, lower = AXES[axis]
    dense = [r for r in board_runs if r.method == "dense" and metric in r.metrics]
    if axis == "pkr":
        reference = 1.0
    elif axis == "gmacs":
        reference = max((r.metrics["gmacs"] for r in dense), default=max((r.metrics.get("gmacs_dense", 0.0) for r in board_runs), default=1.0))
    else:
        reference = 0.0
    by_method: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for run in board_runs:
        if run.method != "dense" and metric in run.metrics and "AP" in run.metrics:
            cost = run.metrics[metric] if lower else -run.metrics[metric]
            by_method[run.method].append({"cost": cost, "AP": run.metrics["AP"], "run_id": run.run_id})
    out = {}
    for method, points in sorted(by_method.items()):
        front = pareto_front(points, maximize="AP", minimize="cost")
        volume = hypervolume([(p["cost"], p["AP"]) for p in front], (reference if lower else -reference, 0.0))
        out[method] = {"points": points, "front": front, "hypervolume": volume, "reference": reference}
    return out


def pareto_figure(board: Leaderboard, runs: list[EvalRun], axis: str) -> tuple[bytes, dict[str, dict[str, Any]]]:
    """AP vs ``axis`` per method (points, front as a line, dense as a star)."""
    metric, label, lower = AXES[axis]
    fronts = method_fronts(runs, axis)
    figure, ax = plt.subplots(figsize=(6, 4))
    for method, data in fronts.items():
        sign = 1 if lower else -1
        xs = [sign * p["cost"] for p in data["points"]]
        ax.scatter(xs, [p["AP"] for p in data["points"]], alpha=0.45, s=18, color=method_color(method))
        front = sorted(data["front"], key=lambda p: p["cost"])
        ax.plot([sign * p["cost"] for p in front], [p["AP"] for p in front], marker="o", color=method_color(method),
                label=f"{method} (HV {data['hypervolume']:.1f})")
    for run in runs:
        if run.method == "dense" and metric in run.metrics and "AP" in run.metrics:
            ax.scatter([run.metrics[metric]], [run.metrics["AP"]], marker="*", s=160, color="black", zorder=5)
    ax.scatter([], [], marker="*", s=100, color="black", label="dense")
    ax.set_xlabel(label)
    ax.set_ylabel("AP (%)")
    ax.set_title(f"{board.backbone} {board.precision}: AP vs {axis.upper() if axis != 'gmacs' else 'GMACs'}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return png_bytes(figure), fronts


def density_figure(board: Leaderboard, goals: tuple[float, ...]) -> bytes:
    """Fraction of tokens entering each block per method, at the setting nearest each goal (the paper's Fig. 5)."""
    methods = sorted({r.method for r in board.settings})
    figure, axes = plt.subplots(1, max(1, len(goals)), figsize=(5 * max(1, len(goals)), 3.6), squeeze=False)
    for ax, goal in zip(axes[0], sorted(goals, reverse=True)):
        rows = [board.dense] + [r for r in (board.nearest(m, goal) for m in methods) if r is not None]
        for row in rows:
            keeps = [r.per_block_keep for r in row.runs if r.per_block_keep]
            if not keeps:
                continue
            mean = [sum(k[i] for k in keeps) / len(keeps) for i in range(BLOCKS)]
            label = row.method if row.method == "dense" else f"{row.method} ({row.setting})"
            ax.plot(range(BLOCKS), mean, marker="o", label=label, color=method_color(row.method),
                    linestyle="--" if row.method == "dense" else "-")
        ax.set_title(f"setting nearest goal PKR {100 * goal:.0f} %")
        ax.set_xlabel("block")
        ax.set_ylabel("tokens kept")
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return png_bytes(figure)


def ioi_table(board: Leaderboard) -> list[dict[str, Any]]:
    """IoI (all, S, M, L) per method and setting (Tables 3/8)."""
    return [{"method": r.method, "setting": r.setting, **{k: r.mean.get(f"ioi_{k}") for k in ("all", "S", "M", "L")}}
            for r in [board.dense, *board.settings]]


DIAGNOSTIC_BLOCKS = (1, 2, 3, 6, 9)


def diagnostics_table(board: Leaderboard, goals: tuple[float, ...]) -> list[dict[str, Any]]:
    """How well each method finds the objects, at the setting nearest each goal: IoI (the share of object
    patches that enter the block) and foreground precision (the share of entering tokens that are object
    patches) at blocks 1, 2, 3, 6, 9 — the oracle's numbers are the ceiling of selection."""
    records = []
    for goal in sorted(goals, reverse=True):
        for method in sorted({r.method for r in board.settings}):
            row = board.nearest(method, goal)
            if row is None:
                continue
            record: dict[str, Any] = {"goal": goal, "method": method, "setting": row.setting}
            for name, field_name in (("IoI", "ioi_per_block"), ("fg prec.", "fg_precision")):
                for block in DIAGNOSTIC_BLOCKS:
                    values = [getattr(r, field_name).get(f"{block:02d}") for r in row.runs]
                    values = [v for v in values if v is not None]
                    record[f"{name} b{block}"] = sum(values) / len(values) if values else None
            records.append(record)
    return records


def convergence_table(board: Leaderboard) -> list[dict[str, Any]]:
    """Per method and setting: measured PKR, each learned stage's final keep beside its target, runs converged."""
    records = []
    for row in board.settings:
        stages = sorted({k for r in row.runs for k in r.target_keep}, key=lambda k: int(k[1:]))
        keeps = []
        for stage in stages:
            final = [r.final_keep[stage] for r in row.runs if stage in r.final_keep]
            target = next(r.target_keep[stage] for r in row.runs if stage in r.target_keep)
            keeps.append(f"{stage} {sum(final) / len(final):.3f}/{target:.3f}" if final else f"{stage} –/{target:.3f}")
        records.append({"method": row.method, "setting": row.setting, "PKR": row.mean.get("pkr"),
                        "final keep / target": ", ".join(keeps) or "(no learned stage)", "converged": row.converged})
    return records


def _html_table(records: list[dict[str, Any]]) -> str:
    if not records:
        return "<p>(none)</p>"
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in records[0])

    def cell(v: Any) -> str:
        if v is None:
            return "–"
        return f"{v:.3f}" if isinstance(v, float) else html.escape(str(v))

    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r.values()) + "</tr>" for r in records)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# After loading, the page states in its title whether every figure decoded and every table has rows
# (headless browsers and tests read it; a person sees the same title).
_SELF_CHECK = """<script>window.addEventListener('load', function () {
  var imgs = Array.from(document.images), tables = Array.from(document.querySelectorAll('table'));
  var figures = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  var filled = tables.filter(function (t) { return t.querySelectorAll('tbody tr').length > 0; }).length;
  document.title = 'prunebench report: ' + figures + '/' + imgs.length + ' figures, ' + filled + '/' + tables.length + ' tables';
});</script>"""


def write_report(tracking_uri: str, out: str | Path, experiment: str | None = None,
                 goals: tuple[float, ...] = (0.55, 0.40)) -> dict[str, Any]:
    """Fetch the runs once, build everything, write the files; return the leaderboard and file list."""
    runs = fetch_runs(tracking_uri, experiment)
    boards = build_leaderboards(runs, goals)
    out = Path(out)
    files: list[str] = []

    def save(name: str, data: bytes) -> None:
        files.append(str(write_bytes(out / name, data)))

    sections, records, setting_records = [], [], []
    text = markdown(boards)
    save("leaderboard.md", (text + "\n").encode())
    for index, board in enumerate(boards):
        board_runs = [r for r in runs if r.group == board.group]
        suffix = "" if len(boards) == 1 else f"_{index}"
        figures, volumes = {}, []
        for axis in AXES:
            png, fronts = pareto_figure(board, board_runs, axis)
            figures[f"pareto_{axis}{suffix}.png"] = png
            volumes += [{"axis": axis, "method": m, "hypervolume": d["hypervolume"], "reference": d["reference"],
                         "front_size": len(d["front"])} for m, d in fronts.items()]
        figures[f"density{suffix}.png"] = density_figure(board, goals)
        figures[f"learning_curves{suffix}.png"] = learning_curves_figure(tracking_uri, board)
        recovery = recovery_figure(board, max(goals))
        if recovery is not None:
            figures[f"scene_cuts{suffix}.png"] = recovery
        for name, png in figures.items():
            save(name, png)
        group = {"backbone": board.backbone, "dataset": board.dataset, "precision": board.precision}
        goal_records = [{**group, **r.as_dict()} for r in board.goals]
        settings = [{**group, **r.as_dict()} for r in [board.dense, *board.settings]]
        records += goal_records
        setting_records += settings
        images = "".join(f'<figure><img alt="{n}" src="data:image/png;base64,{base64.b64encode(b).decode()}">'
                         f"<figcaption>{n}</figcaption></figure>" for n, b in figures.items())
        shown = [{k: r[k] for k in ("method", "setting", "seeds", "pkr", "AP", "AP_std", "mAP_bbox", "mAP_segm",
                                    "gmacs", "fps_model", "converged")} for r in settings]
        goal_shown = [{k: r[k] for k in ("goal_pkr", "rank", "method", "ap_at_goal", "ap_ci", "delta_ap_dense",
                                         "delta_ap_random", "p_vs_vpp", "converged_runs", "seeds", "pkr")}
                      for r in goal_records]
        sections.append(f"<h2>{html.escape(board.describe())}</h2>"
                        f"<h3>Leaderboard at the goal PKRs</h3>{_html_table(goal_shown)}"
                        f"<h3>Every setting</h3>{_html_table(shown)}"
                        f"<h3>Convergence</h3>{_html_table(convergence_table(board))}"
                        f"<h3>Finding the objects (%, setting nearest each goal)</h3>"
                        f"{_html_table(diagnostics_table(board, goals))}"
                        f"<h3>Pareto fronts (hypervolume)</h3>{_html_table(volumes)}"
                        f"<h3>IoI (%)</h3>{_html_table(ioi_table(board))}"
                        f"<h3>Scene-cut recovery: frame IoI (%) by frames since the change, setting nearest "
                        f"PKR {100 * max(goals):.0f} %</h3>{_html_table(recovery_table(board, max(goals)))}"
                        f"<h3>Figures</h3><div class='figs'>{images}</div>")
    for name, rows in (("leaderboard.parquet", records), ("settings.parquet", setting_records)):
        with atomic_path(out / name) as tmp:
            pq.write_table(pa.Table.from_pylist(rows), tmp, compression="zstd")
        files.append(str(out / name))
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>prunebench report</title><style>"
            "body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;margin:1em 0}"
            "td,th{border:1px solid #bbb;padding:3px 8px;font-size:13px;text-align:right}th{background:#eee}"
            ".figs{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0}img{max-width:640px}</style></head><body>"
            f"<h1>prunebench report</h1><p>{len(runs)} evaluation runs from <code>{html.escape(tracking_uri)}</code>"
            f"{' (experiment ' + html.escape(experiment) + ')' if experiment else ''}.</p>{''.join(sections)}"
            f"<p>{html.escape(text.splitlines()[-1])}</p>{_SELF_CHECK}</body></html>")
    save("report.html", page.encode())
    return {"leaderboard": records, "settings": setting_records, "markdown": text, "files": files}
