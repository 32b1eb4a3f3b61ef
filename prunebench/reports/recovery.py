"""The report's scene-cut section (paper §5.4): frame IoI against frames since a change of scene, per method.

For each method the runs at its setting nearest the goal PKR are averaged (over seeds), one line per
method, in three panels: after the videos' scene cuts, after the paper's lead-in of white frames, and
from each video's start without a lead-in (the reference). See ``evaluation.scene_cuts``.
"""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from prunebench.evaluation.scene_cuts import ALIGNMENTS, offset_name, offsets  # noqa: E402
from prunebench.reports.leaderboard import Leaderboard, SettingRow  # noqa: E402
from prunebench.reports.style import method_color, png_bytes  # noqa: E402

TITLES = {"cut": "after a scene cut (-1: the frame before)", "blank": "after three white frames",
          "start": "from the video's start (no lead-in)"}


def recovery_curve(row: SettingRow, alignment: str) -> list[float | None]:
    """Mean frame IoI over the row's runs at each offset of ``alignment`` (None where no run has a value)."""
    curve = []
    for offset in offsets(alignment):
        values = [r.recovery[f"{alignment}_{offset_name(offset)}"] for r in row.runs
                  if f"{alignment}_{offset_name(offset)}" in r.recovery]
        curve.append(sum(values) / len(values) if values else None)
    return curve


def _rows(board: Leaderboard, goal: float) -> list[SettingRow]:
    methods = sorted({r.method for r in board.settings})
    return [row for row in (board.nearest(m, goal) for m in methods) if row is not None]


def recovery_table(board: Leaderboard, goal: float) -> list[dict[str, Any]]:
    """One record per method and alignment: the setting used and the mean frame IoI (%) at every offset."""
    records = []
    for alignment in ALIGNMENTS:
        for row in _rows(board, goal):
            curve = recovery_curve(row, alignment)
            if any(v is not None for v in curve):
                records.append({"after": alignment, "method": row.method, "setting": row.setting,
                                **{f"t{offset:+d}": v for offset, v in zip(offsets(alignment), curve)}})
    return records


def recovery_figure(board: Leaderboard, goal: float) -> bytes | None:
    """The three panels (None when no run measured any of them)."""
    rows = _rows(board, goal)
    if not any(r.recovery for row in rows for r in row.runs):
        return None
    figure, axes = plt.subplots(1, len(ALIGNMENTS), figsize=(4.4 * len(ALIGNMENTS), 3.4), squeeze=False, sharey=True)
    for ax, alignment in zip(axes[0], ALIGNMENTS):
        for row in rows:
            curve = recovery_curve(row, alignment)
            points = [(x, y) for x, y in zip(offsets(alignment), curve) if y is not None]
            if points:
                ax.plot(*zip(*points), marker="o", color=method_color(row.method), label=f"{row.method} ({row.setting})")
        ax.set_title(TITLES[alignment], fontsize=9)
        ax.set_xlabel("frames since the change")
        ax.set_ylim(0, 102)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"frame IoI (%), setting nearest PKR {100 * goal:.0f} %")
    labelled = {label: handle for ax in axes[0] for handle, label in zip(*ax.get_legend_handles_labels())}
    axes[0][-1].legend(labelled.values(), labelled.keys(), fontsize=7)
    return png_bytes(figure)
