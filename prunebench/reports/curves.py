"""Learning curves of the fine-tuning runs, from their MLflow metric histories.

Per method, one panel of task loss against step (one line per run: the probe's, and faint the
windows' training means) and one of each learned stage's keep on the probe against step beside its
target (dashed): the probe's readings are what the convergence verdicts of the leaderboard are read
from (``training.probe``).
"""

from __future__ import annotations

from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from prunebench.reports.leaderboard import Leaderboard  # noqa: E402
from prunebench.reports.style import method_color, png_bytes  # noqa: E402


def _history(client: MlflowClient, run_id: str, key: str) -> tuple[list[int], list[float]]:
    points = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
    return [s for s, _ in points], [v for _, v in points]


def learning_curves_figure(tracking_uri: str, board: Leaderboard) -> bytes:
    """Task loss (probe, and faint the training means) and per-stage probe keep vs target over the fine-tuning
    steps, one column per method."""
    client = MlflowClient(tracking_uri)
    by_method = defaultdict(list)
    for row in board.settings:
        by_method[row.method] += row.runs
    methods = sorted(by_method)
    figure, axes = plt.subplots(2, max(1, len(methods)), figsize=(3.6 * max(1, len(methods)), 5.4), squeeze=False)
    for column, method in enumerate(methods):
        loss_ax, keep_ax = axes[0][column], axes[1][column]
        for run in by_method[method]:
            loss_ax.plot(*_history(client, run.run_id, "train_task_loss"), color=method_color(method), alpha=0.15, lw=1)
            loss_ax.plot(*_history(client, run.run_id, "probe_task_loss"), color=method_color(method), alpha=0.6, lw=1)
            for stage, target in run.target_keep.items():
                keep_ax.plot(*_history(client, run.run_id, f"probe_keep_{stage}"), alpha=0.5, lw=1)
                keep_ax.axhline(target, linestyle="--", color="black", lw=0.6, alpha=0.4)
        loss_ax.set_title(method)
        loss_ax.set_ylabel("task loss (probe; faint: training)")
        keep_ax.set_ylabel("probe stage keep (dashed: target)")
        keep_ax.set_xlabel("fine-tuning step")
        keep_ax.set_ylim(0, 1.05)
        for ax in (loss_ax, keep_ax):
            ax.grid(alpha=0.3)
    figure.tight_layout()
    return png_bytes(figure)
