"""Binary metrics and decision thresholds of the defective class: the one place both are computed.

Training (classifier and PatchCore), calibration, evaluation and retraining all judge a model with these
functions, so a figure on a card, in `edge-inspect eval` and in a retraining decision means the same.
Higher score = more defective; a part is rejected (predicted defective) when score >= threshold.

F1 is 2·TP / (2·TP + FP + FN), exactly as scikit-learn's `f1_score` computes it, for one threshold and
for all candidate thresholds at once. AUROC comes from scikit-learn, imported only when asked for, so
calibration and the gateway's imports stay numpy-only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_inspect.inspector.rules import QualityRules, judge, normalise_scores
from edge_inspect.models.package import Thresholds


@dataclass(frozen=True)
class Confusion:
    """Counts of the defective class at one threshold."""

    tp: int
    fp: int
    tn: int
    fn: int

    @property
    def n(self) -> int:
        return self.tp + self.fp + self.tn + self.fn

    @property
    def accuracy(self) -> float:
        return (self.tp + self.tn) / self.n if self.n else 0.0

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        return 2 * self.tp / (2 * self.tp + self.fp + self.fn) if self.tp else 0.0


def as_scores(scores: Any, what: str) -> np.ndarray:
    """`scores` as a flat float64 array; NaN or infinity is refused (a broken model, not a score)."""
    values = np.asarray(scores, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{what} scores contain NaN or infinity; check the model's outputs")
    return values


def confusion(labels: np.ndarray, scores: np.ndarray, threshold: float) -> Confusion:
    truth = np.asarray(labels, dtype=bool)
    predicted = np.asarray(scores, dtype=np.float64) >= threshold
    return Confusion(
        tp=int(np.sum(truth & predicted)),
        fp=int(np.sum(~truth & predicted)),
        tn=int(np.sum(~truth & ~predicted)),
        fn=int(np.sum(truth & ~predicted)),
    )


def auroc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve; None when the labels hold only one class (it is undefined there)."""
    truth = np.asarray(labels, dtype=bool)
    if truth.all() or not truth.any():
        return None
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(truth, scores))


def compute_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    """Binary metrics of the defective class at `threshold`, as cards and `edge-inspect eval` report them."""
    counts = confusion(labels, scores, threshold)
    return {
        "n": counts.n,
        "n_defective": counts.tp + counts.fn,
        "threshold": float(threshold),
        "accuracy": counts.accuracy,
        "precision": counts.precision,
        "recall": counts.recall,
        "f1": counts.f1,
        "auroc": auroc(labels, scores),
        "confusion": {"tn": counts.tn, "fp": counts.fp, "fn": counts.fn, "tp": counts.tp},
    }


def midpoints(scores: np.ndarray) -> np.ndarray:
    """Midpoints between neighbouring distinct scores: cut points that sit in a gap rather than on one
    image's exact score."""
    distinct = np.unique(scores)
    return (distinct[:-1] + distinct[1:]) / 2


def best_threshold(labels: np.ndarray, scores: np.ndarray, low: float = 0.02, high: float = 0.98) -> float:
    """The accuracy-maximising threshold within [low, high]; ties go to the one nearest 0.5.

    Candidates are the scores' midpoints and 0.5. Use it on validation data only.
    """
    truth = np.asarray(labels, dtype=bool)
    candidates = np.clip(np.append(midpoints(np.asarray(scores, dtype=np.float64)), 0.5), low, high)
    accuracy = np.array([np.mean((scores >= t) == truth) for t in candidates])
    best = np.flatnonzero(accuracy == accuracy.max())
    return float(candidates[best[np.argmin(np.abs(candidates[best] - 0.5))]])


def f1_score_at(good_scores: Any, defective_scores: Any, threshold: float) -> float:
    """F1 of the defective class when parts at or above `threshold` are rejected."""
    good = as_scores(good_scores, "good")
    bad = as_scores(defective_scores, "defective")
    labels = np.concatenate([np.zeros(good.size, dtype=bool), np.ones(bad.size, dtype=bool)])
    return confusion(labels, np.concatenate([good, bad]), threshold).f1


def f1_optimal_threshold(good_scores: Any, defective_scores: Any) -> tuple[float, float]:
    """(threshold, F1) maximising F1 of the defective class over all cut points of the scores.

    Candidates are the lowest score (rejecting all) and the midpoints. Ties go to the highest threshold:
    the same F1 with fewer rejected parts.
    """
    good = as_scores(good_scores, "good")
    bad = as_scores(defective_scores, "defective")
    if bad.size == 0:
        raise ValueError("no defective scores: the F1-optimal threshold needs defects")
    everything = np.concatenate([good, bad])
    candidates = np.append(everything.min(), midpoints(everything))
    # Rejections at each candidate, from sorted scores instead of one pass per candidate.
    tp = bad.size - np.searchsorted(np.sort(bad), candidates, side="left")
    fp = good.size - np.searchsorted(np.sort(good), candidates, side="left")
    f1 = 2 * tp / (2 * tp + fp + (bad.size - tp))
    best = np.flatnonzero(f1 == f1.max())[-1]
    return float(candidates[best]), float(f1[best])


def threshold_for_frr(good_scores: Any, target_frr: float) -> float:
    """The lowest threshold that rejects at most floor(target_frr * n) of the good validation scores.

    It sits just above the highest good score that must still pass (the next float32 up, so the
    model's own float32 score of that image stays below it).
    """
    good = np.sort(as_scores(good_scores, "good"))[::-1]
    if good.size == 0:
        raise ValueError("no good validation scores: the false-reject threshold needs good images")
    if not 0.0 < target_frr < 0.5:
        raise ValueError(f"target false-reject rate {target_frr} must lie in (0, 0.5); e.g. 0.005 for 0.5 %")
    allowed = math.floor(target_frr * good.size)
    return float(np.nextafter(np.float32(good[allowed]), np.float32(np.inf)))


def miss_rate(defective_scores: Any, threshold: float) -> float:
    """Share of defective parts that would pass (score below the threshold)."""
    bad = as_scores(defective_scores, "defective")
    if bad.size == 0:
        raise ValueError("no defective scores: the miss rate is undefined")
    return float(np.mean(bad < threshold))


def verdicts(scores: np.ndarray, thresholds: Thresholds) -> list[str]:
    """OK / NG / REVIEW per raw score, through the inspector's rules with default quality rules."""
    normalised = normalise_scores(scores, thresholds)
    return [judge(float(s), [], thresholds, QualityRules()) for s in normalised]


def review_metrics(labels: np.ndarray, scores: np.ndarray, thresholds: Thresholds) -> dict[str, Any]:
    """How many parts go to REVIEW, and the accuracy on the parts decided automatically."""
    decided = np.array([v != "REVIEW" for v in verdicts(scores, thresholds)])
    truth = np.asarray(labels, dtype=bool)[decided]
    predicted = np.asarray(scores)[decided] >= thresholds.threshold
    return {
        "review_rate": float(1.0 - decided.mean()) if decided.size else 0.0,
        "accuracy_decided": float(np.mean(truth == predicted)) if truth.size else None,
    }


def pixel_auroc(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> float | None:
    """AUROC of anomaly-map pixels against mask pixels over a whole split (the MVTec AD convention);
    None when no pixel is defective or none is good."""
    if not maps:
        return None
    truth = np.concatenate([m.reshape(-1) for m in masks])
    return auroc(truth, np.concatenate([m.reshape(-1) for m in maps]))


# --- the quality engineer's figures: misses at the promised false-reject rate -------------------------

RATE_INTERVAL = "Clopper-Pearson (exact binomial), two-sided"


@dataclass(frozen=True)
class RateEstimate:
    """`events` out of `trials` (false rejects of good parts, or misses of defective ones), with the
    exact two-sided confidence interval of the true rate."""

    events: int
    trials: int
    low: float
    high: float

    @property
    def rate(self) -> float:
        return self.events / self.trials

    def to_dict(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "n": self.trials,
            "rate": self.rate,
            "low": self.low,
            "high": self.high,
        }


def clopper_pearson_interval(events: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact two-sided interval of a binomial rate: the beta quantiles of Clopper and Pearson (1934).

    Never narrower than the truth at small counts, unlike the normal approximation; 0 of n gives the
    interval [0, 1 - (alpha/2)^(1/n)].
    """
    if trials < 1 or not 0 <= events <= trials:
        raise ValueError(f"need 0 <= events <= trials and trials >= 1, got {events} of {trials}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence {confidence} must lie strictly between 0 and 1")
    from scipy.stats import beta

    tail = (1.0 - confidence) / 2
    low = 0.0 if events == 0 else float(beta.ppf(tail, events, trials - events + 1))
    high = 1.0 if events == trials else float(beta.ppf(1.0 - tail, events + 1, trials - events))
    return low, high


def rate_estimate(events: int, trials: int, confidence: float = 0.95) -> RateEstimate:
    return RateEstimate(events, trials, *clopper_pearson_interval(events, trials, confidence))


def operating_point(
    labels: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    defect_types: Sequence[str] = (),
    confidence: float = 0.95,
) -> dict[str, Any]:
    """False-reject and miss rates at `threshold`, each with its interval (as `RateEstimate.to_dict`);
    misses also per defect type.

    `defect_types` names each image's type ('' for good images and for defects without one); the
    per-type table is empty when no defect has a type.
    """
    truth = np.asarray(labels, dtype=bool)
    values = as_scores(scores, "evaluated")
    rejected = values >= threshold
    point: dict[str, Any] = {
        "threshold": float(threshold),
        "confidence": confidence,
        "interval": RATE_INTERVAL,
        "false_reject": None,
        "miss": None,
        "miss_by_defect_type": {},
    }
    if (~truth).any():
        good = rate_estimate(int(np.sum(rejected & ~truth)), int(np.sum(~truth)), confidence)
        point["false_reject"] = good.to_dict()
    if truth.any():
        defective = rate_estimate(int(np.sum(~rejected & truth)), int(np.sum(truth)), confidence)
        point["miss"] = defective.to_dict()
    types = np.asarray(list(defect_types) or [""] * truth.size)
    for kind in sorted(set(types[truth].tolist()) - {""}):
        of_kind = truth & (types == kind)
        misses = int(np.sum(~rejected & of_kind))
        point["miss_by_defect_type"][kind] = rate_estimate(misses, int(of_kind.sum()), confidence).to_dict()
    return point


def threshold_rejecting_at_most(good_scores: Any, false_rejects: int) -> float:
    """The lowest threshold that rejects at most `false_rejects` of these good parts (all of them may
    be rejected when `false_rejects` is their number)."""
    good = np.sort(as_scores(good_scores, "good"))[::-1]
    if false_rejects >= good.size:
        return -math.inf
    return float(np.nextafter(good[false_rejects], np.inf))


@dataclass(frozen=True)
class MissComparison:
    """Two models on the same images, the candidate held to the reference's false rejects."""

    n_good: int
    n_defective: int
    false_rejects: int
    reference_misses: int
    candidate_misses: int


def misses_at_equal_false_rejects(
    labels: np.ndarray, reference_scores: Any, reference_threshold: float, candidate_scores: Any
) -> MissComparison:
    """How many defective parts each model lets through when the candidate rejects no more good parts
    than the reference does at its own threshold: the comparison a line makes at the false-reject rate
    it promised, independent of where the candidate's own calibration put its threshold."""
    truth = np.asarray(labels, dtype=bool)
    reference = as_scores(reference_scores, "reference")
    candidate = as_scores(candidate_scores, "candidate")
    false_rejects = int(np.sum(reference[~truth] >= reference_threshold))
    candidate_threshold = threshold_rejecting_at_most(candidate[~truth], false_rejects)
    return MissComparison(
        n_good=int(np.sum(~truth)),
        n_defective=int(truth.sum()),
        false_rejects=false_rejects,
        reference_misses=int(np.sum(reference[truth] < reference_threshold)),
        candidate_misses=int(np.sum(candidate[truth] < candidate_threshold)),
    )
