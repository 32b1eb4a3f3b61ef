"""Summaries of paired timing ratios (B ÷ A per pair of runs in alternating order), shared by the benchmarks."""

from __future__ import annotations

import math
import statistics

from scipy import stats


def ratio_interval(ratios: list[float]) -> str:
    """The pairs' geometric mean ratio with its 95 % confidence interval (Student's t on the log ratios)."""
    if len(ratios) < 2:
        return ""
    logs = [math.log(r) for r in ratios]
    interval = stats.ttest_1samp(logs, 0.0).confidence_interval(0.95)
    return (f"; geometric mean {math.exp(statistics.fmean(logs)):.3f}, "
            f"95 % CI {math.exp(interval.low):.3f}–{math.exp(interval.high):.3f}")


def ratio_summary(ratios: list[float]) -> str:
    """The pairs' ratios in one line: median, range, and the geometric mean with its interval."""
    return (f"median {statistics.median(ratios):.2f} (range {min(ratios):.2f}–{max(ratios):.2f} over {len(ratios)} pairs)"
            f"{ratio_interval(ratios)}")
