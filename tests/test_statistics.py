"""The leaderboard's statistics on known numbers; CIs and p-values recomputed with scipy.stats directly."""

import numpy as np
import pytest
from scipy import stats

from prunebench.reports.statistics import (
    bracket,
    interpolate_at,
    interpolate_scores,
    mean_ci,
    paired_difference_ci,
    paired_test,
)

CURVE = [(0.70, 40.0), (0.40, 30.0), (0.55, 36.0)]  # deliberately unsorted


def test_bracket_indices_into_given_order_and_weight():
    lo, hi, w = bracket([x for x, _ in CURVE], 0.50)
    assert (lo, hi) == (1, 2)
    assert w == pytest.approx(2 / 3)


def test_interpolation_exact_on_known_numbers():
    assert interpolate_at(CURVE, 0.50) == pytest.approx(30.0 + 6.0 * 2 / 3)
    assert interpolate_at(CURVE, 0.625) == pytest.approx(38.0)


@pytest.mark.parametrize("goal", [0.39, 0.3999999, 0.7000001, 0.95])
def test_no_extrapolation(goal):
    assert bracket([x for x, _ in CURVE], goal) is None
    assert interpolate_at(CURVE, goal) is None
    assert interpolate_scores([0.4, 0.7], [{"v": 1.0}, {"v": 2.0}], goal) is None


def test_empty_curve():
    assert bracket([], 0.5) is None
    assert interpolate_at([], 0.5) is None


@pytest.mark.parametrize(("goal", "expected", "weight"), [(0.40, 30.0, 0.0), (0.55, 36.0, 1.0), (0.70, 40.0, 1.0)])
def test_goal_equal_to_a_point(goal, expected, weight):
    assert bracket([x for x, _ in CURVE], goal)[2] == weight
    assert interpolate_at(CURVE, goal) == expected


def test_single_point_curve():
    assert bracket([0.5], 0.5) == (0, 0, 0.0)
    assert interpolate_at([(0.5, 33.0)], 0.5) == 33.0
    assert interpolate_at([(0.5, 33.0)], 0.49) is None


def test_duplicate_pkrs_use_their_mean():
    points = [(0.4, 30.0), (0.6, 38.0), (0.4, 32.0), (0.6, 42.0)]
    assert bracket([x for x, _ in points], 0.5) == (0, 1, pytest.approx(0.5))
    assert interpolate_at(points, 0.5) == pytest.approx(0.5 * 31.0 + 0.5 * 40.0)
    assert interpolate_at(points, 0.6) == pytest.approx(40.0)
    assert interpolate_at([(0.5, 1.0), (0.5, 3.0)], 0.5) == pytest.approx(2.0)


def test_non_finite_pkr_is_rejected():
    with pytest.raises(ValueError, match="finite"):
        bracket([0.4, float("nan")], 0.5)


def test_per_key_interpolation_at_a_measured_pkr_takes_its_values_as_they_are():
    """A key missing only at the end with no weight stays; the values are not re-mixed with a zero weight."""
    pkrs = [0.4, 0.6]
    scores = [{"a": 66.67, "b": 20.0}, {"a": 10.0}]
    assert interpolate_scores(pkrs, scores, 0.4) == {"a": 66.67, "b": 20.0}
    assert interpolate_scores(pkrs, scores, 0.6) == {"a": 10.0}


def test_per_key_interpolation_drops_keys_missing_on_either_side():
    pkrs = [0.4, 0.8, 0.6]
    scores = [{"a": 10.0, "b": 20.0, "c": 1.0}, {"a": 99.0}, {"a": 30.0, "b": 40.0}]
    assert interpolate_scores(pkrs, scores, 0.45) == pytest.approx({"a": 15.0, "b": 25.0})


def test_per_key_interpolation_with_duplicate_pkrs():
    pkrs = [0.4, 0.4, 0.6]
    scores = [{"a": 10.0, "b": 5.0}, {"a": 20.0}, {"a": 30.0, "b": 7.0}]
    assert interpolate_scores(pkrs, scores, 0.5) == pytest.approx({"a": 0.5 * 15.0 + 0.5 * 30.0})


def test_per_key_interpolation_needs_one_mapping_per_point():
    with pytest.raises(ValueError, match="2 PKRs but 1"):
        interpolate_scores([0.4, 0.6], [{"a": 1.0}], 0.5)


SEED_AP = [36.1, 37.4, 35.8, 36.9]


@pytest.mark.parametrize("confidence", [0.95, 0.90])
def test_mean_ci_is_the_student_t_interval(confidence):
    mean, (low, high) = mean_ci(SEED_AP, confidence)
    expected = stats.t.interval(confidence, df=len(SEED_AP) - 1, loc=np.mean(SEED_AP), scale=stats.sem(SEED_AP))
    assert mean == pytest.approx(36.55)
    assert (low, high) == pytest.approx(expected)


def test_mean_ci_zero_variance_and_single_value():
    assert mean_ci([0.1, 0.1, 0.1]) == (0.1, (0.1, 0.1))
    assert mean_ci([37.0]) == (37.0, None)
    with pytest.raises(ValueError):
        mean_ci([])


def test_paired_difference_ci_is_the_paired_t_interval():
    a, b = [36.1, 37.4, 35.8, 36.9], [35.0, 36.8, 35.9, 35.7]
    diff = np.subtract(a, b)
    mean, (low, high) = paired_difference_ci(a, b, 0.95)
    expected = stats.t.interval(0.95, df=len(diff) - 1, loc=diff.mean(), scale=stats.sem(diff))
    assert mean == pytest.approx(0.7)
    assert (low, high) == pytest.approx(expected)


def test_paired_difference_ci_zero_variance_single_pair_and_length_mismatch():
    assert paired_difference_ci([3.0, 4.0, 5.0], [1.0, 2.0, 3.0]) == (2.0, (2.0, 2.0))
    assert paired_difference_ci([3.0], [1.0]) == (2.0, None)
    with pytest.raises(ValueError, match="length"):
        paired_difference_ci([1.0, 2.0], [1.0])


def test_paired_test_is_the_paired_t_test_p_value():
    a = [31.2, 28.4, 30.9]
    b = [29.0, 27.9, 27.1]
    assert paired_test(a, b) == pytest.approx(stats.ttest_rel(a, b).pvalue)


def test_paired_test_needs_two_pairs_and_handles_no_spread():
    assert paired_test([30.0], [28.0]) is None
    assert paired_test([30.0, 31.0, 32.0], [28.0, 29.0, 30.0]) == 0.0  # the same difference every seed
    with pytest.raises(ValueError, match="length"):
        paired_test([1.0, 2.0], [1.0])


def test_paired_test_all_differences_zero():
    assert paired_test([0.5, 0.7, 0.9], [0.5, 0.7, 0.9]) == 1.0
