"""The convergence rule on synthetic fine-tuning curves (200 steps, a window every 20 steps).

The tail is the windows at steps 180 and 200 (the last 20 %); the stretch before it, steps 140 and 160.
"""

import pytest

from prunebench.config import load_config
from prunebench.errors import ConfigError
from prunebench.training.convergence import ConvergenceRule, Verdict, Window

TOTAL = 200
TARGETS = {"b3": 0.70, "b6": 0.56}
RULE = ConvergenceRule()


def _run(loss_at=lambda step: 1.0 + 2000.0 / step**2, keep_at=lambda step: dict(TARGETS), every=20):
    """Windows of a run whose loss falls fast early and is flat late, and whose keeps stay put."""
    return [Window(step, loss_at(step), keep_at(step)) for step in range(every, TOTAL + 1, every)]


def _change(loss_at, before=(140, 160), tail=(180, 200)):
    first = sum(loss_at(s) for s in before) / len(before)
    return abs(sum(loss_at(s) for s in tail) / len(tail) - first) / first


def test_converged_run():
    loss = lambda step: 1.0 + 2000.0 / step**2  # noqa: E731
    assert RULE.assess(_run(), TARGETS, TOTAL) == Verdict(
        True, (), {"b3": pytest.approx(0.70), "b6": pytest.approx(0.56)}, pytest.approx(_change(loss)))


def test_a_steady_keep_off_its_target_is_converged_and_reported():
    """Steady is converged: the distance to the target is reported (final_keep), not judged."""
    verdict = RULE.assess(_run(keep_at=lambda step: {"b3": 0.60, "b6": 0.45}), TARGETS, TOTAL)
    assert verdict.converged and verdict.final_keep == {"b3": pytest.approx(0.60), "b6": pytest.approx(0.45)}


def test_keep_at_the_tolerance_passes():
    keep = lambda step: {"b3": 0.70 + (0.02 if step == 200 else -0.02 if step == 180 else 0.0), "b6": 0.56}  # noqa: E731
    assert RULE.assess(_run(keep_at=keep), TARGETS, TOTAL).converged


def test_keep_still_moving_in_the_tail():
    verdict = RULE.assess(_run(keep_at=lambda step: {"b3": 0.70, "b6": 0.50 if step == 180 else 0.56}), TARGETS, TOTAL)
    assert not verdict.converged
    assert verdict.reasons == ("b6 keep 0.500 vs its tail mean 0.530 at step 180 (2 of 2 windows) (tolerance 0.02)",)
    assert verdict.final_keep["b6"] == pytest.approx((0.56 + 0.50) / 2)


def test_keep_moving_in_several_windows_is_one_line():
    keep = lambda step: {"b3": 0.40 + step / 500, "b6": 0.56}  # noqa: E731  rises 0.02 a window of 10 steps
    verdict = RULE.assess(_run(keep_at=keep, every=10), TARGETS, TOTAL)
    assert verdict.reasons == ("b3 keep 0.740 vs its tail mean 0.770 at step 170 (2 of 4 windows) (tolerance 0.02)",)


def test_early_windows_are_not_judged():
    keep = lambda step: {"b3": 0.2 if step < 140 else 0.70, "b6": 0.56}  # noqa: E731
    assert RULE.assess(_run(keep_at=keep), TARGETS, TOTAL).converged


def test_loss_still_falling():
    loss = lambda step: 10.0 - step / 40  # noqa: E731  6.25 before the tail, 5.25 in it
    verdict = RULE.assess(_run(loss_at=loss), TARGETS, TOTAL)
    assert not verdict.converged and verdict.loss_change == pytest.approx(_change(loss))
    assert verdict.reasons == (
        "task loss changed 16.0 % from the previous 20 % of the steps to the last 20 % of 200 steps (allowed < 5.0 %)",)


@pytest.mark.parametrize("fraction, total, losses", [
    (0.4, 100, {20: 2.0, **{step: 1.0 for step in range(30, 101, 10)}}),  # (1 - 2·0.4)·100 = 19.99… in floats
    (0.3, 90, {40: 0.75, 50: 0.75, 63: 1.5, 70: 1.0, 80: 1.0, 90: 1.0}),  # (1 - 0.3)·90 = 62.99… in floats
])
def test_a_window_on_a_boundary_belongs_to_the_stretch_before_it(fraction, total, losses):
    """Each case's loss is flat across the last two stretches only if the window on the boundary (step 20: before
    the compared stretch; step 63: in it, not in the tail) falls on its side; float boundaries moved it across."""
    windows = [Window(step, loss, dict(TARGETS)) for step, loss in losses.items()]
    verdict = ConvergenceRule(last_fraction=fraction).assess(windows, TARGETS, total)
    assert verdict.loss_change == pytest.approx(0.0) and verdict.converged


def test_too_few_windows():
    verdict = RULE.assess(_run(every=100), TARGETS, TOTAL)
    assert not verdict.converged
    assert verdict.reasons[0] == "only 1 logging window in the last 20 % of 200 steps (need 2)"
    assert "no logging window in the 20 % of the steps before" in verdict.reasons[1]
    assert RULE.assess([], {}, TOTAL).loss_change is None


def test_empty_targets_judged_on_windows_and_loss():
    assert RULE.assess(_run(keep_at=lambda step: {}), {}, TOTAL).converged
    assert not RULE.assess(_run(loss_at=lambda step: 10.0 - step / 40, keep_at=lambda step: {}), {}, TOTAL).converged


def test_stage_missing_from_a_window():
    keep = lambda step: {"b3": 0.70} if step == 200 else dict(TARGETS)  # noqa: E731
    verdict = RULE.assess(_run(keep_at=keep), TARGETS, TOTAL)
    assert verdict.reasons == ("b6 keep not logged at step 200",)


@pytest.mark.parametrize("kwargs", [{"last_fraction": 0.0}, {"last_fraction": 1.5}, {"keep_tolerance": -0.1},
                                    {"min_windows": 1}])
def test_invalid_rule(kwargs):
    with pytest.raises(ConfigError, match=f"^config: convergence.{next(iter(kwargs))} must be"):
        load_config({"convergence": kwargs})
