"""Pareto fronts of (maximise one metric, minimise another) and their hypervolume."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def pareto_front(rows: Sequence[dict[str, Any]], maximize: str, minimize: str) -> list[dict[str, Any]]:
    """The rows no other row dominates (≥ on ``maximize`` and ≤ on ``minimize``, one strictly).

    Rows missing either value are left out. The front is sorted by ``minimize`` ascending.
    """
    points = [r for r in rows if r.get(maximize) is not None and r.get(minimize) is not None]
    front = []
    for r in points:
        dominated = any(
            o[maximize] >= r[maximize] and o[minimize] <= r[minimize]
            and (o[maximize] > r[maximize] or o[minimize] < r[minimize])
            for o in points
        )
        if not dominated:
            front.append(r)
    return sorted(front, key=lambda r: (r[minimize], -r[maximize]))


def hypervolume(front: Sequence[tuple[float, float]], reference: tuple[float, float]) -> float:
    """Area dominated by ``front`` points ``(cost, value)`` (cost minimised, value maximised)
    and bounded by ``reference = (max cost, min value)``; points beyond the reference add nothing."""
    ref_cost, ref_value = reference
    inside = sorted((c, v) for c, v in front if c < ref_cost and v > ref_value)
    area, best_value = 0.0, ref_value
    for i, (cost, value) in enumerate(inside):
        best_value = max(best_value, value)
        next_cost = inside[i + 1][0] if i + 1 < len(inside) else ref_cost
        area += (next_cost - cost) * (best_value - ref_value)
    return area
