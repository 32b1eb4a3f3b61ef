"""When a fine-tuning run counts as converged: it has stopped changing.

At the end of every logging window a fine-tuning run measures, on a fixed probe of training clips
(``training.probe``: the same clips and random draws every time, so readings differ only by the
model's parameters), its task loss and, for every learned pruning stage, the mean fraction of tokens
kept there (its keep). Two stretches of the run are compared: the *tail*, the logging windows in the last 20 % of the training steps, and the stretch
just before it (the 20 % before that). The run counts as converged when all three hold:

1. the tail has at least 2 logging windows and the stretch before it at least 1;
2. every learned stage's keep is steady: within ±0.02 of its own tail mean in every tail window;
   a stage that was not logged in a window fails;
3. the task loss has levelled off: the tail's mean task loss differs from the mean of the stretch
   before it by less than 5 % of the latter.

A run without learned stages (a fixed keep schedule) is judged on 1 and 3 alone. The rule judges
whether more steps would change the run, not whether a stage reached its keep target: the tail mean
of each stage is reported beside its target (``final_keep``), and the leaderboard compares methods
at their measured PKR anyway. (A target can be out of reach under the protocol: VPP's SMs are
trained on frame chains whose first frame has no temporal state, so their loss balances that frame
against the others, as in the released code.) The percentages and counts are the defaults of
``ConvergenceRule`` (with ``probe_clips``, the probe's size); a run that is not converged is
reported with the reasons, one line each. Why a probe and not the windows' training means:
``docs/convergence.md``.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction

from pydantic import Field

from prunebench.validation import ConfigModel

# Keeps exactly at the tolerance, written in decimals, pass despite binary rounding (0.56 - 0.54 > 0.02).
_ROUNDING = 1e-9


@dataclass(frozen=True)
class Window:
    """One logging window of a fine-tuning run: its last step, and the probe's task loss and keep per stage."""

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


class ConvergenceRule(ConfigModel):
    """The convergence rule of the module docstring, with its thresholds (the config's ``convergence``)."""

    last_fraction: float = Field(0.2, gt=0, le=1)
    keep_tolerance: float = Field(0.02, ge=0)
    loss_tolerance: float = Field(0.05, ge=0)
    min_windows: int = Field(2, ge=2)  # a steady keep needs two windows
    probe_clips: int = Field(8, ge=1)  # the training clips every window is measured on (training.probe)

    def assess(self, windows: Sequence[Window], targets: Mapping[str, float], total_steps: int) -> Verdict:
        """Judge a run from its logging windows, its stages' target keeps and its number of steps."""
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        fraction = self.last_fraction
        span = f"the last {100 * fraction:g} % of {total_steps} steps"
        ordered = sorted(windows, key=lambda w: w.step)
        # the boundaries in exact arithmetic: in floats (1 - 2 * 0.4) * 100 is 19.999999999999996, which put a
        # window at step 20 into the stretch before the tail's
        tail_start = Fraction(str(fraction)) * total_steps
        tail_from, before_from = total_steps - tail_start, total_steps - 2 * tail_start
        tail = [w for w in ordered if w.step > tail_from]
        before = [w for w in ordered if before_from < w.step <= tail_from]
        reasons = []
        if len(tail) < self.min_windows:
            reasons.append(f"only {len(tail)} logging window{'' if len(tail) == 1 else 's'} in {span} "
                           f"(need {self.min_windows})")
        if not before:
            reasons.append(f"no logging window in the {100 * fraction:g} % of the steps before {span}")
        final = _final_keep(tail)
        for stage in targets:
            reasons.extend(self._keep_reasons(stage, final.get(stage), tail))
        change = _loss_change(before, tail)
        if change is not None and not change < self.loss_tolerance:
            reasons.append(f"task loss changed {100 * change:.1f} % from the previous {100 * fraction:g} % of the steps "
                           f"to {span} (allowed < {100 * self.loss_tolerance:.1f} %)")
        return Verdict(not reasons, tuple(reasons), final, change)

    def _keep_reasons(self, stage: str, mean: float | None, tail: Sequence[Window]) -> list[str]:
        """At most two lines for one stage: windows that did not log it, windows off its tail mean."""
        reasons = []
        missing = [w for w in tail if stage not in w.keep]
        if missing:
            reasons.append(f"{stage} keep not logged at step {missing[0].step}{_share(missing, tail)}")
        off = [w for w in tail if stage in w.keep and mean is not None
               and not abs(w.keep[stage] - mean) <= self.keep_tolerance + _ROUNDING]
        if off:
            reasons.append(f"{stage} keep {off[0].keep[stage]:.3f} vs its tail mean {mean:.3f} at step {off[0].step}"
                           f"{_share(off, tail)} (tolerance {self.keep_tolerance})")
        return reasons


def _share(failed: Sequence[Window], tail: Sequence[Window]) -> str:
    """`` (3 of 4 windows)`` when more than one window failed, else nothing."""
    return f" ({len(failed)} of {len(tail)} windows)" if len(failed) > 1 else ""


def _loss_change(before: Sequence[Window], tail: Sequence[Window]) -> float | None:
    """|mean tail loss - mean loss before it| / |mean loss before it|; None when either stretch is empty."""
    if not before or not tail:
        return None
    first = statistics.fmean(w.task_loss for w in before)
    second = statistics.fmean(w.task_loss for w in tail)
    if first == 0:
        return 0.0 if second == 0 else float("inf")
    return abs(second - first) / abs(first)


def _final_keep(tail: Sequence[Window]) -> dict[str, float]:
    """Mean keep of every stage over the windows that logged it."""
    stages = dict.fromkeys(stage for w in tail for stage in w.keep)
    return {stage: statistics.fmean(w.keep[stage] for w in tail if stage in w.keep) for stage in stages}
