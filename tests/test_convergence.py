"""The convergence rule on synthetic fine-tuning curves (200 steps, a window every 20 steps)."""

import pytest

from prunebench.training.convergence import ConvergenceRule, Verdict, Window

TOTAL = 200
TARGETS = {"b3": 0.70, "b6": 0.56}
RULE = ConvergenceRule()


def _run(loss_at=lambda step: 1.0 + 50.0 / step, keep_at=lambda step: dict(TARGETS), every=20):
    """Windows of a run whose loss falls fast early and is flat late, and whose keeps sit on target."""
    return [Window(step, loss_at(step), keep_at(step)) for step in range(every, TOTAL + 1, every)]


def test_converged_run():
    flat = (50 / 180 - 50 / 200) / (1 + 50 / 180)  # windows at steps 180 and 200 are judged
    assert RULE.assess(_run(), TARGETS, TOTAL) == Verdict(
        True, (), {"b3": pytest.approx(0.70), "b6": pytest.approx(0.56)}, pytest.approx(flat))


def test_keep_at_the_tolerance_passes():
    keep = {"b3": 0.72, "b6": 0.54}
    assert RULE.assess(_run(keep_at=lambda step: keep), TARGETS, TOTAL).converged


def test_keep_off_by_003_in_one_window():
    verdict = RULE.assess(_run(keep_at=lambda step: {"b3": 0.70, "b6": 0.53 if step == 180 else 0.56}), TARGETS, TOTAL)
    assert not verdict.converged
    assert verdict.reasons == ("b6 keep 0.530 vs target 0.560 at step 180 (tolerance 0.02)",)
    assert verdict.final_keep["b6"] == pytest.approx((0.56 + 0.53) / 2)


def test_keep_off_in_several_windows_is_one_line():
    verdict = RULE.assess(_run(keep_at=lambda step: {"b3": 0.60, "b6": 0.56}, every=10), TARGETS, TOTAL)
    assert verdict.reasons == ("b3 keep 0.600 vs target 0.700 at step 170 (4 of 4 windows) (tolerance 0.02)",)


def test_early_windows_are_not_judged():
    keep_at = lambda step: {"b3": 0.95, "b6": 0.95} if step <= 160 else dict(TARGETS)  # noqa: E731
    assert RULE.assess(_run(keep_at=keep_at), TARGETS, TOTAL).converged


def test_loss_still_falling_ten_percent():
    loss = {180: 1.0, 200: 0.9}
    verdict = RULE.assess(_run(loss_at=lambda step: loss.get(step, 2.0)), TARGETS, TOTAL)
    assert not verdict.converged
    assert verdict.loss_change == pytest.approx(0.10)
    assert verdict.reasons == ("task loss changed 10.0 % over the last 20 % of 200 steps (allowed < 5.0 %)",)


def test_loss_halves_skip_the_middle_window():
    loss = {170: 1.0, 180: 5.0, 190: 1.0, 200: 1.02}
    windows = [Window(step, loss[step], dict(TARGETS)) for step in (200, 170, 190, 180)]  # any order
    verdict = RULE.assess(windows + [Window(160, 9.0, dict(TARGETS))], TARGETS, TOTAL)
    assert verdict.loss_change == pytest.approx(abs((1.0 + 1.02) / 2 - (1.0 + 5.0) / 2) / 3.0)
    three = RULE.assess([Window(step, loss[step], dict(TARGETS)) for step in (170, 180, 190)], TARGETS, TOTAL)
    assert three.loss_change == 0.0 and three.converged


@pytest.mark.parametrize(("steps", "reason"), [
    ((200,), "only 1 logging window in the last 20 % of 200 steps (need 2)"),
    ((100, 160), "only 0 logging windows in the last 20 % of 200 steps (need 2)"),
])
def test_too_few_windows(steps, reason):
    verdict = RULE.assess([Window(step, 1.0, dict(TARGETS)) for step in steps], TARGETS, TOTAL)
    assert not verdict.converged
    assert verdict.reasons == (reason,)
    assert verdict.loss_change is None


def test_empty_targets_judged_on_windows_and_loss():
    no_stages = lambda step: {}  # noqa: E731
    assert RULE.assess(_run(keep_at=no_stages), {}, TOTAL).converged
    falling = RULE.assess(_run(loss_at=lambda step: 400.0 / step, keep_at=no_stages), {}, TOTAL)
    assert not falling.converged and falling.reasons[0].startswith("task loss changed 10.0 %")


def test_stage_missing_from_a_window():
    keep_at = lambda step: {"b3": 0.70} if step == 200 else dict(TARGETS)  # noqa: E731
    verdict = RULE.assess(_run(keep_at=keep_at), TARGETS, TOTAL)
    assert not verdict.converged
    assert verdict.reasons == ("b6 keep not logged at step 200",)
    assert verdict.final_keep == {"b3": pytest.approx(0.70), "b6": pytest.approx(0.56)}


@pytest.mark.parametrize("kwargs", [{"last_fraction": 0.0}, {"last_fraction": 1.5}, {"keep_tolerance": -0.1},
                                    {"min_windows": 1}])
def test_invalid_rule(kwargs):
    with pytest.raises(ValueError):
        ConvergenceRule(**kwargs)
