"""Calibration against cases worked out by hand (and scipy's beta quantiles for the exact bound)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edge_inspect.models.package import Thresholds
from edge_inspect.training.calibrate import (
    REVIEW_BAND_BOUNDS,
    binomial_cdf,
    calibrate,
    clopper_pearson_upper,
    good_images_needed,
    normalisation_points,
    review_band,
)
from edge_inspect.training.metrics import f1_optimal_threshold, f1_score_at, miss_rate, threshold_for_frr


def test_threshold_rejects_exactly_the_allowed_number_of_good_parts() -> None:
    good = np.arange(1.0, 201.0)  # 200 good parts scoring 1 … 200
    threshold = threshold_for_frr(good, 0.01)  # 1 % of 200: the two highest may be rejected
    assert 198.0 < threshold < 199.0
    assert int(np.sum(good >= threshold)) == 2
    # Just above the highest passing score: the float32 score of that part still passes.
    assert np.float32(198.0) < np.float32(threshold)


def test_threshold_above_every_good_part_when_the_target_allows_none() -> None:
    good = np.array([0.3, 0.9, 0.1, 0.5])
    threshold = threshold_for_frr(good, 0.005)
    assert threshold > 0.9
    assert threshold == pytest.approx(0.9, abs=1e-6)


def test_threshold_with_ties_keeps_the_tied_parts_together() -> None:
    good = np.array([1.0, 2.0, 2.0, 2.0, 3.0] * 20)  # 100 parts, the top 20 tie at 3.0
    threshold = threshold_for_frr(good, 0.1)  # allows 10 rejects, but 20 share the score
    assert threshold > 3.0
    assert int(np.sum(good >= threshold)) == 0


def test_threshold_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="no good validation scores"):
        threshold_for_frr([], 0.01)
    with pytest.raises(ValueError, match=r"must lie in \(0, 0.5\)"):
        threshold_for_frr([1.0, 2.0], 0.5)
    with pytest.raises(ValueError, match="NaN"):
        threshold_for_frr([1.0, float("nan")], 0.01)


def test_binomial_cdf_hand_values() -> None:
    assert binomial_cdf(0, 3, 0.5) == pytest.approx(0.125)
    assert binomial_cdf(1, 3, 0.5) == pytest.approx(0.5)
    assert binomial_cdf(3, 3, 0.5) == 1.0
    assert binomial_cdf(0, 10, 0.1) == pytest.approx(0.9**10)


@pytest.mark.parametrize(
    ("failures", "trials"), [(0, 1), (0, 170), (1, 170), (3, 50), (10, 1000), (49, 50), (0, 5000)]
)
def test_clopper_pearson_upper_matches_the_beta_quantile(failures: int, trials: int) -> None:
    beta = pytest.importorskip("scipy.stats").beta
    expected = beta.ppf(0.95, failures + 1, trials - failures)
    assert clopper_pearson_upper(failures, trials, 0.95) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_clopper_pearson_upper_closed_forms() -> None:
    # No failures: (1 - p)^n = 1 - confidence.
    assert clopper_pearson_upper(0, 170, 0.95) == pytest.approx(1 - 0.05 ** (1 / 170), rel=1e-12)
    assert clopper_pearson_upper(5, 5, 0.95) == 1.0
    with pytest.raises(ValueError, match="failures <= trials"):
        clopper_pearson_upper(6, 5)
    with pytest.raises(ValueError, match="confidence"):
        clopper_pearson_upper(0, 5, 1.0)


def test_good_images_needed_for_a_target() -> None:
    needed = good_images_needed(0.005, 0.95)
    assert needed == 598  # ln(0.05) / ln(0.995) = 597.6
    assert clopper_pearson_upper(0, needed) <= 0.005 < clopper_pearson_upper(0, needed - 1)


def test_miss_rate_and_f1_at_a_threshold() -> None:
    good = [0.1, 0.2, 0.3, 0.6]
    bad = [0.5, 0.7, 0.8]
    assert miss_rate(bad, 0.65) == pytest.approx(1 / 3)
    assert miss_rate(bad, 0.5) == 0.0  # at the threshold is a reject
    # t = 0.4: tp 3, fp 1 (0.6), fn 0 -> F1 = 6 / 7.
    assert f1_score_at(good, bad, 0.4) == pytest.approx(6 / 7)


def test_f1_optimal_threshold_hand_case() -> None:
    good = [0.1, 0.2, 0.3, 0.6]
    bad = [0.5, 0.7, 0.8]
    # Cut points: reject >= 0.4 gives 6/7; >= 0.65 gives 4/5; >= 0.55 gives 4/6.
    threshold, f1 = f1_optimal_threshold(good, bad)
    assert threshold == pytest.approx(0.4)
    assert f1 == pytest.approx(6 / 7)


def test_f1_optimal_threshold_ties_go_to_the_higher_threshold() -> None:
    # Scores high to low: bad 1.0, good 0.8, good 0.7, bad 0.1. Rejecting everything (tp 2, fp 2) and
    # rejecting >= 0.9 (tp 1, fn 1) both give F1 = 2/3; the cuts in between give less.
    threshold, f1 = f1_optimal_threshold([0.8, 0.7], [1.0, 0.1])
    assert f1 == pytest.approx(2 / 3)
    assert threshold == pytest.approx(0.9)
    threshold, f1 = f1_optimal_threshold([0.0, 0.5, 0.55], [1.0])
    assert (threshold, f1) == (pytest.approx(0.775), 1.0)


def test_normalisation_points() -> None:
    good = [1.0, 2.0, 3.0, 4.0, 10.0]
    assert normalisation_points(good, 11.0, [5.0, 20.0, 30.0]) == (3.0, pytest.approx(28.0))
    # Defect quantile below the threshold, or no defects: mirrored about the threshold.
    assert normalisation_points(good, 11.0, [5.0, 6.0]) == (3.0, 19.0)
    assert normalisation_points(good, 11.0) == (3.0, 19.0)
    with pytest.raises(ValueError, match="median good score"):
        normalisation_points(good, 3.0)


def test_review_band_is_bounded() -> None:
    low, high = REVIEW_BAND_BOUNDS
    # Every good part scores the same: the threshold cannot move, so the band is the minimum.
    same = np.full(200, 1.0)
    t = threshold_for_frr(same, 0.01)
    assert review_band(same, 0.01, Thresholds(t, 0.5, 2.0)) == low
    # One outlier decides the threshold: it drops to the bulk in most resamples, so the band is the maximum.
    outlier = np.append(np.full(99, 1.0), 2.0)
    t = threshold_for_frr(outlier, 0.005)
    assert review_band(outlier, 0.005, Thresholds(t, 1.0 - 1e-3, 3.0)) == high


def test_review_band_narrows_with_more_validation_images() -> None:
    # The standard error of the 99 % quantile of n normal scores is about 0.17 sigma * sqrt(500 / n), and
    # the threshold lies 2.3 sigma above the median (normalised 0): at n = 500 the 95 % interval spans
    # roughly ±0.07 or more on the normalised scale, at n = 20000 a sixth of that, under the lower bound.
    rng = np.random.default_rng(0)
    bands = []
    for n in (500, 20000):
        good = rng.normal(10.0, 1.0, n)
        t = threshold_for_frr(good, 0.01)
        low = float(np.median(good))
        bands.append(review_band(good, 0.01, Thresholds(t, low, 2 * t - low)))
    assert 0.06 < bands[0] < REVIEW_BAND_BOUNDS[1]
    assert bands[1] == REVIEW_BAND_BOUNDS[0]


def test_calibrate_with_defects() -> None:
    rng = np.random.default_rng(1)
    good = rng.normal(10.0, 1.0, 400)
    bad = rng.normal(16.0, 2.0, 100)
    result = calibrate(good, bad, target_frr=0.01, confidence=0.95)
    t = result.thresholds
    assert result.false_rejects == int(np.sum(good >= t.threshold)) == 4
    assert result.frr == pytest.approx(0.01)
    assert result.frr_upper_bound == pytest.approx(clopper_pearson_upper(4, 400, 0.95))
    assert t.score_low == pytest.approx(np.median(good))
    assert t.score_high == pytest.approx(np.quantile(bad, 0.9))
    assert REVIEW_BAND_BOUNDS[0] <= t.review_band <= REVIEW_BAND_BOUNDS[1]
    assert result.miss_rate == pytest.approx(np.mean(bad < t.threshold))
    assert result.f1_optimal is not None and result.f1_at_threshold is not None
    assert result.f1_optimal >= result.f1_at_threshold
    assert result.n_good_needed == math.ceil(math.log(0.05) / math.log(0.99))
    bound = f"{result.frr_upper_bound * 100:.2f} %"
    assert result.statement == (
        f"with 95 % confidence the false-reject rate is below {bound} "
        "(4 of 400 good validation images rejected)"
    )
    metrics = result.metrics()
    assert metrics["statement"] == result.statement and metrics["n_defective"] == 100


def test_calibrate_good_only() -> None:
    good = np.linspace(1.0, 2.0, 170)
    result = calibrate(good, target_frr=0.005)
    assert result.false_rejects == 0 and result.n_defective == 0
    assert result.miss_rate is None and result.f1_optimal_threshold is None
    t = result.thresholds
    assert t.threshold == pytest.approx(2.0, abs=1e-6)
    assert t.score_high == pytest.approx(2 * t.threshold - t.score_low)
    assert "below 1.75 %" in result.statement  # 1 - 0.05 ** (1 / 170)
