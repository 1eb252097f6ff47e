"""The shared metrics and threshold searches against plain references on random scores: brute-force loops
over every candidate threshold, pair counting for AUROC, and scikit-learn's own scores."""

from __future__ import annotations

import math
from itertools import pairwise

import numpy as np
import pytest
from scipy.stats import binom
from sklearn import metrics as sk

from edge_inspect.training.metrics import (
    auroc,
    best_threshold,
    clopper_pearson_interval,
    compute_metrics,
    f1_optimal_threshold,
    f1_score_at,
    miss_rate,
    misses_at_equal_false_rejects,
    operating_point,
    threshold_for_frr,
)

SEEDS = range(12)


def random_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and scores in (0, 1); even seeds draw from 21 levels so that ties between scores occur."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 60))
    labels = rng.random(n) < rng.uniform(0.2, 0.6)
    labels[:2] = [False, True]  # both classes
    scores = np.clip(rng.normal(0.35 + 0.3 * labels, 0.2), 0.0, 1.0)
    if seed % 2 == 0:
        scores = np.round(scores * 20) / 20
    return labels, scores


def plain_f1(labels: np.ndarray, scores: np.ndarray, threshold: float) -> float:
    tp = sum(1 for y, s in zip(labels, scores, strict=True) if y and s >= threshold)
    fp = sum(1 for y, s in zip(labels, scores, strict=True) if not y and s >= threshold)
    fn = sum(1 for y, s in zip(labels, scores, strict=True) if y and s < threshold)
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def plain_midpoints(scores: np.ndarray) -> list[float]:
    distinct = sorted(set(scores.tolist()))
    return [(a + b) / 2 for a, b in pairwise(distinct)]


@pytest.mark.parametrize("seed", SEEDS)
def test_compute_metrics_matches_scikit_learn(seed: int) -> None:
    labels, scores = random_case(seed)
    threshold = float(np.median(scores))
    m = compute_metrics(labels, scores, threshold)
    predicted = scores >= threshold
    tn, fp, fn, tp = sk.confusion_matrix(labels, predicted, labels=[False, True]).ravel()
    assert m["confusion"] == {"tn": tn, "fp": fp, "fn": fn, "tp": tp}
    assert m["accuracy"] == pytest.approx(sk.accuracy_score(labels, predicted), abs=1e-15)
    assert m["precision"] == pytest.approx(sk.precision_score(labels, predicted, zero_division=0), abs=1e-15)
    assert m["recall"] == pytest.approx(sk.recall_score(labels, predicted, zero_division=0), abs=1e-15)
    assert m["f1"] == sk.f1_score(labels, predicted, zero_division=0)
    assert m["auroc"] == pytest.approx(sk.roc_auc_score(labels, scores), abs=1e-15)


@pytest.mark.parametrize("seed", SEEDS)
def test_auroc_is_the_share_of_correctly_ranked_pairs(seed: int) -> None:
    labels, scores = random_case(seed)
    bad, good = scores[labels], scores[~labels]
    pairs = sum(1.0 if b > g else 0.5 if b == g else 0.0 for b in bad for g in good)
    assert auroc(labels, scores) == pytest.approx(pairs / (bad.size * good.size), abs=1e-12)
    assert auroc(np.zeros_like(labels), scores) is None


@pytest.mark.parametrize("seed", SEEDS)
def test_f1_at_a_threshold_matches_the_counts_and_scikit_learn(seed: int) -> None:
    labels, scores = random_case(seed)
    for threshold in (0.0, 0.3, 0.5, 0.7, 1.1):
        f1 = f1_score_at(scores[~labels], scores[labels], threshold)
        assert f1 == plain_f1(labels, scores, threshold)
        assert f1 == sk.f1_score(labels, scores >= threshold, zero_division=0)
        assert f1 == compute_metrics(labels, scores, threshold)["f1"]


@pytest.mark.parametrize("seed", SEEDS)
def test_f1_optimal_threshold_is_the_best_of_every_cut_point(seed: int) -> None:
    labels, scores = random_case(seed)
    candidates = [float(scores.min()), *plain_midpoints(scores)]
    f1s = [sk.f1_score(labels, scores >= t, zero_division=0) for t in candidates]
    best = max(f1s)
    # Ties go to the highest threshold.
    expected = max(t for t, f in zip(candidates, f1s, strict=True) if f == best)
    assert f1_optimal_threshold(scores[~labels], scores[labels]) == (expected, best)


@pytest.mark.parametrize("seed", SEEDS)
def test_best_threshold_maximises_accuracy_nearest_one_half(seed: int) -> None:
    labels, scores = random_case(seed)
    candidates = [min(max(t, 0.02), 0.98) for t in [*plain_midpoints(scores), 0.5]]
    accuracy = [sum((s >= t) == y for y, s in zip(labels, scores, strict=True)) for t in candidates]
    best = [t for t, a in zip(candidates, accuracy, strict=True) if a == max(accuracy)]
    nearest = min(abs(t - 0.5) for t in best)
    assert abs(best_threshold(labels, scores) - 0.5) == pytest.approx(nearest, abs=1e-15)
    chosen = best_threshold(labels, scores)
    assert sum((s >= chosen) == y for y, s in zip(labels, scores, strict=True)) == max(accuracy)


@pytest.mark.parametrize("seed", SEEDS)
def test_frr_threshold_rejects_as_many_good_parts_as_allowed_and_no_more(seed: int) -> None:
    _, scores = random_case(seed)
    for target in (0.01, 0.1, 0.3):
        threshold = threshold_for_frr(scores, target)
        allowed = math.floor(target * scores.size)
        highest_passing = sorted(scores.tolist(), reverse=True)[allowed]
        assert sum(s >= threshold for s in scores) <= allowed
        # Just above the highest good score that must pass: its float32 rounding plus one float32 step.
        assert 0 < threshold - highest_passing <= 1.5 * float(np.spacing(np.float32(highest_passing)))


@pytest.mark.parametrize("seed", SEEDS)
def test_miss_rate_is_the_share_of_defects_below_the_threshold(seed: int) -> None:
    labels, scores = random_case(seed)
    bad = scores[labels]
    for threshold in (0.2, 0.5, 0.8):
        assert miss_rate(bad, threshold) == sum(b < threshold for b in bad) / bad.size


@pytest.mark.parametrize(("events", "trials"), [(0, 1), (0, 20), (3, 20), (10, 10), (7, 450), (89, 204)])
def test_clopper_pearson_interval_solves_its_defining_tail_equations(events: int, trials: int) -> None:
    low, high = clopper_pearson_interval(events, trials, confidence=0.95)
    assert low <= events / trials <= high
    # The lower end is the rate at which seeing `events` or more is just 2.5 % likely, the upper end
    # the rate at which seeing `events` or fewer is.
    if events:
        assert binom.sf(events - 1, trials, low) == pytest.approx(0.025, rel=1e-6)
    else:
        assert low == 0.0
    if events < trials:
        assert binom.cdf(events, trials, high) == pytest.approx(0.025, rel=1e-6)
    else:
        assert high == 1.0
    if events == 0:
        assert high == pytest.approx(1 - 0.025 ** (1 / trials), rel=1e-9)
    with pytest.raises(ValueError, match="events <= trials"):
        clopper_pearson_interval(trials + 1, trials)


@pytest.mark.parametrize("seed", SEEDS)
def test_operating_point_counts_false_rejects_and_misses_per_defect_type(seed: int) -> None:
    labels, scores = random_case(seed)
    rng = np.random.default_rng(seed)
    types = np.where(labels, rng.choice(["crack", "spot"], labels.size), "")
    threshold = float(np.median(scores))
    point = operating_point(labels, scores, threshold, types.tolist())
    good, bad = scores[~labels], scores[labels]
    assert point["false_reject"]["events"] == sum(g >= threshold for g in good)
    assert point["false_reject"]["n"] == good.size
    assert point["miss"]["events"] == sum(b < threshold for b in bad)
    assert point["miss"]["rate"] == miss_rate(bad, threshold)
    assert point["miss"]["low"] <= point["miss"]["rate"] <= point["miss"]["high"]
    for kind, estimate in point["miss_by_defect_type"].items():
        of_kind = scores[labels & (types == kind)]
        assert (estimate["events"], estimate["n"]) == (int(np.sum(of_kind < threshold)), of_kind.size)
    assert sum(e["n"] for e in point["miss_by_defect_type"].values()) == bad.size
    assert operating_point(labels, scores, threshold)["miss_by_defect_type"] == {}


@pytest.mark.parametrize("seed", SEEDS)
def test_candidate_is_held_to_the_references_false_rejects_and_misses_as_few_as_it_can(seed: int) -> None:
    labels, reference = random_case(seed)
    candidate = np.clip(reference + np.random.default_rng(seed).normal(0, 0.15, reference.size), 0, 1)
    reference_threshold = float(np.quantile(reference[~labels], 0.8))
    compared = misses_at_equal_false_rejects(labels, reference, reference_threshold, candidate)
    allowed = sum(g >= reference_threshold for g in reference[~labels])
    assert compared.false_rejects == allowed
    assert compared.reference_misses == sum(b < reference_threshold for b in reference[labels])
    # The fewest misses of any threshold that rejects no more good parts than the reference does.
    thresholds = [*candidate.tolist(), math.inf]
    fewest = min(
        sum(b < t for b in candidate[labels])
        for t in thresholds
        if sum(g >= t for g in candidate[~labels]) <= allowed
    )
    assert compared.candidate_misses == fewest
