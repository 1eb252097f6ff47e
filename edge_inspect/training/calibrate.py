"""Decision thresholds from validation scores, with a statement of how far the validation set can be trusted.

An anomaly score has no natural scale, so the threshold is set where the line needs it: at a target
false-reject rate (FRR) on good parts. A handful of good validation images cannot prove a small rate,
so every calibration also carries a one-sided Clopper-Pearson upper bound on the true FRR at the chosen
threshold. When labelled defects are available it reports the miss rate there and the F1-optimal
threshold for comparison. The normalisation points (score_low, score_high) and the REVIEW band come
from the same scores. The threshold searches and F1 themselves live in `metrics`, shared with evaluation.

Pure numpy and stdlib; higher score = more anomalous; a part is rejected when score >= threshold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_inspect.inspector.rules import NORMALISED_THRESHOLD, normalise_scores
from edge_inspect.models.package import Thresholds
from edge_inspect.training.metrics import (
    as_scores,
    f1_optimal_threshold,
    f1_score_at,
    miss_rate,
    threshold_for_frr,
)

DEFAULT_TARGET_FRR = 0.005
DEFAULT_CONFIDENCE = 0.95
# The REVIEW band never vanishes (scores jitter between captures of one part) and never swallows the
# scale (a band wider than 0.15 sends clearly decided parts to a person).
REVIEW_BAND_BOUNDS = (0.02, 0.15)
# Bad parts at or above this quantile of the defect scores count as "clearly bad" (normalised 1).
DEFECT_QUANTILE = 0.9
BOOTSTRAP_RESAMPLES = 1000


@dataclass(frozen=True)
class Calibration:
    """What calibration chose (`thresholds`) and the evidence for it (everything else, for the card)."""

    thresholds: Thresholds
    target_frr: float
    confidence: float
    n_good: int
    false_rejects: int
    frr: float
    frr_upper_bound: float
    # Good images that must all pass before the bound can reach the target.
    n_good_needed: int
    n_defective: int
    miss_rate: float | None
    f1_at_threshold: float | None
    f1_optimal_threshold: float | None
    f1_optimal: float | None
    statement: str

    def metrics(self) -> dict[str, Any]:
        """The card's `metrics["calibration"]` entry (the thresholds themselves live in the card)."""
        return {
            "target_frr": self.target_frr,
            "confidence": self.confidence,
            "n_good": self.n_good,
            "false_rejects": self.false_rejects,
            "frr": self.frr,
            "frr_upper_bound": self.frr_upper_bound,
            "n_good_needed": self.n_good_needed,
            "n_defective": self.n_defective,
            "miss_rate": self.miss_rate,
            "f1_at_threshold": self.f1_at_threshold,
            "f1_optimal_threshold": self.f1_optimal_threshold,
            "f1_optimal": self.f1_optimal,
            "statement": self.statement,
        }


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed in log space so large n does not underflow."""
    if k < 0:
        return 0.0
    if k >= n or p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    i = np.arange(k + 1, dtype=np.float64)
    log_choose = math.lgamma(n + 1) - np.array([math.lgamma(j + 1) + math.lgamma(n - j + 1) for j in i])
    log_terms = log_choose + i * math.log(p) + (n - i) * math.log1p(-p)
    return float(min(1.0, np.exp(np.logaddexp.reduce(log_terms))))


def clopper_pearson_upper(failures: int, trials: int, confidence: float = DEFAULT_CONFIDENCE) -> float:
    """One-sided exact upper confidence bound on a binomial rate after `failures` in `trials`.

    The p at which seeing `failures` or fewer becomes as unlikely as 1 - confidence (equal to the
    beta quantile B(confidence; failures + 1, trials - failures)); found by bisection.
    """
    if trials < 1 or not 0 <= failures <= trials:
        raise ValueError(f"need 0 <= failures <= trials and trials >= 1, got {failures} of {trials}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence {confidence} must lie strictly between 0 and 1")
    if failures == trials:
        return 1.0
    alpha = 1.0 - confidence
    low, high = failures / trials, 1.0
    # 100 halvings reach the float64 resolution of [0, 1].
    for _ in range(100):
        mid = 0.5 * (low + high)
        if binomial_cdf(failures, trials, mid) > alpha:
            low = mid
        else:
            high = mid
    return high


def good_images_needed(target_rate: float, confidence: float = DEFAULT_CONFIDENCE) -> int:
    """Smallest n for which n passes out of n put the upper bound at or below `target_rate`."""
    return math.ceil(math.log(1.0 - confidence) / math.log1p(-target_rate))


def normalisation_points(
    good_scores: Any, threshold: float, defective_scores: Any | None = None
) -> tuple[float, float]:
    """(score_low, score_high): the median good score, and a high quantile of the defect scores.

    Without defects, or when that quantile does not exceed the threshold (a weak model), score_high
    mirrors score_low about the threshold so that the scale stays symmetric around 0.5.
    """
    good = as_scores(good_scores, "good")
    low = float(np.median(good))
    if low >= threshold:
        raise ValueError(
            f"median good score {low:.6g} is not below the threshold {threshold:.6g}; a false-reject "
            "target of 50 % or more cannot be normalised"
        )
    high = threshold + (threshold - low)
    if defective_scores is not None:
        bad = as_scores(defective_scores, "defective")
        if bad.size:
            quantile = float(np.quantile(bad, DEFECT_QUANTILE))
            high = quantile if quantile > threshold else high
    return low, high


def review_band(
    good_scores: Any,
    target_frr: float,
    thresholds: Thresholds,
    confidence: float = DEFAULT_CONFIDENCE,
    bounds: tuple[float, float] = REVIEW_BAND_BOUNDS,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> float:
    """Normalised half-width of the REVIEW band: how far the threshold itself is uncertain.

    The good validation set is bootstrapped and the FRR threshold chosen again on each resample; the
    band covers the central `confidence` interval of those thresholds on the normalised scale. Parts
    inside it would change verdict under an equally plausible validation set, so a person decides.
    """
    good = as_scores(good_scores, "good")
    rng = np.random.default_rng(seed)
    samples = np.sort(rng.choice(good, size=(resamples, good.size), replace=True), axis=1)[:, ::-1]
    allowed = math.floor(target_frr * good.size)
    # The same rule as threshold_for_frr, row by row; the float32 step above each is immaterial here.
    replicated = samples[:, allowed]
    tail = (1.0 - confidence) / 2
    ends = np.quantile(replicated, [tail, 1.0 - tail])
    half_width = float(np.max(np.abs(normalise_scores(ends, thresholds) - NORMALISED_THRESHOLD)))
    return float(np.clip(half_width, *bounds))


def frr_statement(false_rejects: int, n_good: int, upper: float, confidence: float) -> str:
    return (
        f"with {confidence * 100:g} % confidence the false-reject rate is below {upper * 100:.2f} % "
        f"({false_rejects} of {n_good} good validation images rejected)"
    )


def calibrate(
    good_scores: Any,
    defective_scores: Any | None = None,
    target_frr: float = DEFAULT_TARGET_FRR,
    confidence: float = DEFAULT_CONFIDENCE,
    band_bounds: tuple[float, float] = REVIEW_BAND_BOUNDS,
    seed: int = 0,
) -> Calibration:
    """Thresholds for `target_frr` from validation scores of good parts (and of defects when known)."""
    good = as_scores(good_scores, "good")
    bad = as_scores(defective_scores, "defective") if defective_scores is not None else np.zeros(0)
    threshold = threshold_for_frr(good, target_frr)
    low, high = normalisation_points(good, threshold, bad)
    provisional = Thresholds(threshold=threshold, score_low=low, score_high=high)
    band = review_band(good, target_frr, provisional, confidence, band_bounds, seed=seed)
    thresholds = Thresholds(threshold=threshold, score_low=low, score_high=high, review_band=band)
    rejects = int(np.sum(good >= threshold))
    upper = clopper_pearson_upper(rejects, good.size, confidence)
    has_defects = bad.size > 0
    f1_threshold, f1_best = f1_optimal_threshold(good, bad) if has_defects else (None, None)
    return Calibration(
        thresholds=thresholds,
        target_frr=target_frr,
        confidence=confidence,
        n_good=int(good.size),
        false_rejects=rejects,
        frr=rejects / good.size,
        frr_upper_bound=upper,
        n_good_needed=good_images_needed(target_frr, confidence),
        n_defective=int(bad.size),
        miss_rate=miss_rate(bad, threshold) if has_defects else None,
        f1_at_threshold=f1_score_at(good, bad, threshold) if has_defects else None,
        f1_optimal_threshold=f1_threshold,
        f1_optimal=f1_best,
        statement=frr_statement(rejects, good.size, upper, confidence),
    )
