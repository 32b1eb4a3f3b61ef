"""When a fine-tuning run counts as converged.

A fine-tuning run logs, once per logging window, its step, its task loss and, for every learned
pruning stage, the mean fraction of tokens kept there (its keep) beside the keep it is trained to
reach (its target). Only the end of the run is judged: the logging windows in the last 20 % of the
training steps. The run counts as converged when all three hold there:

1. there are at least 2 logging windows to judge;
2. every learned stage keeps within 0.02 of its target (e.g. 0.54 to 0.58 for a target of 0.56) in
   every one of those windows; a stage that was not logged in a window fails;
3. the task loss has levelled off: the mean task loss of the second half of those windows differs
   from that of the first half by less than 5 % of the first half's (with an odd number of windows
   the middle one belongs to neither half).

A run without learned stages (e.g. a fixed keep schedule) is judged on 1 and 3 alone. The
percentages and counts are the defaults of ``ConvergenceRule``; a run that is not converged is
reported with the reasons, one line each.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from prunebench.errors import ConfigError

# Keeps exactly at the tolerance, written in decimals, pass despite binary rounding (0.56 - 0.54 > 0.02).
_ROUNDING = 1e-9


@dataclass(frozen=True)
class Window:
    """One logging window of a fine-tuning run: its last step, mean task loss and keep per stage."""

    step: int
    task_loss: float
    keep: Mapping[str, float]


@dataclass(frozen=True)
class Verdict:
    """Whether a run converged, why not (one line per reason) and its final keeps and loss change."""

    converged: bool
    reasons: tuple[str, ...]
    final_keep: dict[str, float]
    loss_change: float | None


@dataclass(frozen=True)
class ConvergenceRule:
    """The convergence rule of the module docstring, with its thresholds."""

    last_fraction: float = 0.2
    keep_tolerance: float = 0.02
    loss_tolerance: float = 0.05
    min_windows: int = 2

    def __post_init__(self) -> None:
        if not 0 < self.last_fraction <= 1:
            raise ConfigError(f"convergence.last_fraction={self.last_fraction}; allowed: a fraction in (0, 1]")
        if self.keep_tolerance < 0 or self.loss_tolerance < 0:
            raise ConfigError(f"convergence tolerances keep={self.keep_tolerance}, loss={self.loss_tolerance}; "
                              "allowed: numbers >= 0")
        if self.min_windows < 2:
            raise ConfigError(f"convergence.min_windows={self.min_windows}; allowed: >= 2 (a flat loss needs two halves)")

    def assess(self, windows: Sequence[Window], targets: Mapping[str, float], total_steps: int) -> Verdict:
        """Judge a run from its logging windows, its stages' target keeps and its number of steps."""
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        span = f"the last {100 * self.last_fraction:g} % of {total_steps} steps"
        tail = sorted((w for w in windows if w.step > (1 - self.last_fraction) * total_steps), key=lambda w: w.step)
        reasons = []
        if len(tail) < self.min_windows:
            reasons.append(f"only {len(tail)} logging window{'' if len(tail) == 1 else 's'} in {span} "
                           f"(need {self.min_windows})")
        for stage, target in targets.items():
            reasons.extend(self._keep_reasons(stage, target, tail))
        change = _loss_change(tail)
        if change is not None and not change < self.loss_tolerance:
            reasons.append(f"task loss changed {100 * change:.1f} % over {span} "
                           f"(allowed < {100 * self.loss_tolerance:.1f} %)")
        return Verdict(not reasons, tuple(reasons), _final_keep(tail), change)

    def _keep_reasons(self, stage: str, target: float, tail: Sequence[Window]) -> list[str]:
        """At most two lines for one stage: windows that did not log it, windows off its target."""
        reasons = []
        missing = [w for w in tail if stage not in w.keep]
        if missing:
            reasons.append(f"{stage} keep not logged at step {missing[0].step}{_share(missing, tail)}")
        off = [w for w in tail if stage in w.keep
               and not abs(w.keep[stage] - target) <= self.keep_tolerance + _ROUNDING]
        if off:
            reasons.append(f"{stage} keep {off[0].keep[stage]:.3f} vs target {target:.3f} at step {off[0].step}"
                           f"{_share(off, tail)} (tolerance {self.keep_tolerance})")
        return reasons


def _share(failed: Sequence[Window], tail: Sequence[Window]) -> str:
    """`` (3 of 4 windows)`` when more than one window failed, else nothing."""
    return f" ({len(failed)} of {len(tail)} windows)" if len(failed) > 1 else ""


def _loss_change(tail: Sequence[Window]) -> float | None:
    """|mean loss of the second half - mean of the first half| / |mean of the first half|; None under 2 windows."""
    half = len(tail) // 2
    if half == 0:
        return None
    first = statistics.fmean(w.task_loss for w in tail[:half])
    second = statistics.fmean(w.task_loss for w in tail[-half:])
    if first == 0:
        return 0.0 if second == 0 else float("inf")
    return abs(second - first) / abs(first)


def _final_keep(tail: Sequence[Window]) -> dict[str, float]:
    """Mean keep of every stage over the windows that logged it."""
    stages = dict.fromkeys(stage for w in tail for stage in w.keep)
    return {stage: statistics.fmean(w.keep[stage] for w in tail if stage in w.keep) for stage in stages}
