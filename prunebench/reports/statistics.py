"""The leaderboard's statistics: interpolation at a goal PKR, confidence intervals and paired tests.

A method's AP at a goal PKR is read off its curve of (measured PKR, AP) points by linear
interpolation between the two measured points that enclose the goal, never extrapolated. Over seeds,
a mean gets a two-sided Student-t confidence interval (``scipy.stats.ttest_1samp``), and the
difference of two methods gets the paired Student-t interval of ``scipy.stats.ttest_rel``, where a
pair is the two methods' results for the same seed. Whether two methods differ is decided by the
two-sided paired Student-t test over seeds (``paired_test``, ``scipy.stats.ttest_rel``); the leaderboard
feeds it each seed's mean over the validation videos of per-video AP at the goal. The seed is the unit:
a seed's fine-tuning moves all of its videos together, so (seed, video) pairs are not independent, and a
test that counted them as such (a Wilcoxon signed-rank test over them, used until 2026-12-05) calls two
methods of equal mean different far more often than its level says. A p-value below ``ALPHA`` counts as
a difference.
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections.abc import Hashable, Mapping, Sequence
from typing import TypeVar

import numpy as np
from scipy import stats

K = TypeVar("K", bound=Hashable)

ALPHA = 0.05


def _tied(pkrs: Sequence[float], index: int) -> list[int]:
    """Indices of every point with exactly the PKR of ``pkrs[index]``."""
    return [i for i, x in enumerate(pkrs) if x == pkrs[index]]


def bracket(pkrs: Sequence[float], goal: float) -> tuple[int, int, float] | None:
    """The two adjacent points of the PKR-sorted curve that enclose ``goal`` and the upper one's weight.

    Returns ``(lo, hi, w)``: indices into ``pkrs`` of the points just below and just above ``goal``,
    and the weight of the upper one, so the value at ``goal`` is ``(1 - w) * y[lo] + w * y[hi]``.
    None when ``goal`` lies outside ``[min(pkrs), max(pkrs)]`` (there is no extrapolation). A goal
    equal to a measured PKR is bracketed, by the segment below it (w = 1) or, at the minimum, the
    segment above it (w = 0); a curve with one distinct PKR gives ``(i, i, 0.0)``.

    Several points at exactly the same PKR form one point of the curve: the index returned for it
    is the first of them in the given order, and ``interpolate_at`` and ``interpolate_scores`` use
    the mean value of all of them there.
    """
    if not all(math.isfinite(x) for x in pkrs):
        raise ValueError(f"PKRs must be finite numbers, got {list(pkrs)}")
    firsts: dict[float, int] = {}
    for i, x in enumerate(pkrs):
        firsts.setdefault(x, i)
    xs = sorted(firsts)
    if not xs or not xs[0] <= goal <= xs[-1]:
        return None
    if len(xs) == 1:
        return firsts[xs[0]], firsts[xs[0]], 0.0
    upper = max(1, bisect.bisect_left(xs, goal))
    x0, x1 = xs[upper - 1], xs[upper]
    return firsts[x0], firsts[x1], (goal - x0) / (x1 - x0)


def interpolate_at(points: Sequence[tuple[float, float]], goal: float) -> float | None:
    """Value of the curve of ``(pkr, value)`` points linearly interpolated at PKR = ``goal``; None outside it."""
    pkrs = [x for x, _ in points]
    found = bracket(pkrs, goal)
    if found is None:
        return None
    lo, hi, w = found
    y_lo = statistics.fmean(points[i][1] for i in _tied(pkrs, lo))
    y_hi = statistics.fmean(points[i][1] for i in _tied(pkrs, hi))
    return (1 - w) * y_lo + w * y_hi


def interpolate_scores(pkrs: Sequence[float], per_point_scores: Sequence[Mapping[K, float]],
                       goal: float) -> dict[K, float] | None:
    """Per-key scores (e.g. per video) interpolated at ``goal`` with the weights of ``bracket``.

    Only keys present in every point the value depends on are kept (both bracketing PKRs, or the one
    of them that has all the weight when the goal is a measured PKR; there its values are taken as they
    are); points sharing a PKR are averaged key by key. None when ``goal`` lies outside the measured PKRs.
    """
    if len(pkrs) != len(per_point_scores):
        raise ValueError(f"{len(pkrs)} PKRs but {len(per_point_scores)} score mappings")
    found = bracket(pkrs, goal)
    if found is None:
        return None
    lo, hi, w = found
    ends = [(1 - w, [per_point_scores[i] for i in _tied(pkrs, lo)]), (w, [per_point_scores[i] for i in _tied(pkrs, hi)])]
    ends = [(weight, points) for weight, points in ends if weight > 0] or ends[:1]
    keys = [k for k in ends[0][1][0] if all(k in s for _, points in ends for s in points)]
    if len(ends) == 1:
        return {k: statistics.fmean(s[k] for s in ends[0][1]) for k in keys}
    return {k: sum(weight * statistics.fmean(s[k] for s in points) for weight, points in ends) for k in keys}


def _as_array(values: Sequence[float]) -> np.ndarray:
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        raise ValueError("no values")
    return data


def _paired(a: Sequence[float], b: Sequence[float]) -> np.ndarray:
    """Differences ``a - b`` of paired observations."""
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} vs {len(b)}")
    return _as_array(a) - _as_array(b)


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, tuple[float, float] | None]:
    """Mean of ``values`` (e.g. over seeds) and its two-sided Student-t confidence interval.

    The interval is None for a single value; a sample of identical values gives ``(mean, mean)``.
    ValueError for no values.
    """
    data = _as_array(values)
    if data.size < 2:
        return float(data[0]), None
    if np.ptp(data) == 0:
        return float(data[0]), (float(data[0]), float(data[0]))
    ci = stats.ttest_1samp(data, 0.0).confidence_interval(confidence_level=confidence)
    return float(np.mean(data)), (float(ci.low), float(ci.high))


def paired_difference_ci(a: Sequence[float], b: Sequence[float],
                         confidence: float = 0.95) -> tuple[float, tuple[float, float] | None]:
    """Mean of ``a - b`` over pairs (same seed) and its paired Student-t interval (``ttest_rel``).

    The interval is None for a single pair; identical differences give ``(mean, mean)``.
    ValueError for no pairs or samples of different lengths.
    """
    diff = _paired(a, b)
    if diff.size < 2:
        return float(diff[0]), None
    if np.ptp(diff) == 0:
        return float(diff[0]), (float(diff[0]), float(diff[0]))
    ci = stats.ttest_rel(a, b).confidence_interval(confidence_level=confidence)
    return float(np.mean(diff)), (float(ci.low), float(ci.high))


def paired_test(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided p-value of the paired Student-t test (``ttest_rel``) of ``a`` vs ``b``, one pair per seed.

    None for a single pair (no spread to test against); 1.0 when every difference is zero; 0.0 when every
    difference is the same non-zero value (no spread: the t statistic is infinite).
    ValueError for no pairs or samples of different lengths.
    """
    diff = _paired(a, b)
    if diff.size < 2:
        return None
    if np.ptp(diff) == 0:
        return 1.0 if diff[0] == 0 else 0.0
    return float(stats.ttest_rel(a, b).pvalue)
