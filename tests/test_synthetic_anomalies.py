"""Choosing good-only settings without real defects: each synthetic defect kind changes the part where its
mask says and nowhere else, keeps the camera's format, and comes out the same for a seed; the choice
among candidate settings follows its stated rule."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from edge_inspect.training.select_patchcore import (
    Candidate,
    Trial,
    candidate_grid,
    choose,
    feature_positions,
    score_trial,
    within_cost,
)
from edge_inspect.training.synthetic_anomalies import ANOMALY_KINDS, synthesize_anomaly, synthetic_defects


def good_part(shape: tuple[int, ...], dtype: type) -> np.ndarray:
    rng = np.random.default_rng(7)
    top = np.iinfo(dtype).max
    smooth = ndimage.gaussian_filter(rng.normal(size=shape[:2]), 4)
    part = 0.5 * top + 0.1 * top * smooth / smooth.std()
    if len(shape) == 3:
        part = np.repeat(part[..., None], shape[2], axis=2)
    return np.clip(part, 0, top).astype(dtype)


@pytest.mark.parametrize("kind", ANOMALY_KINDS)
@pytest.mark.parametrize(
    ("shape", "dtype"), [((96, 128), np.uint8), ((64, 64, 3), np.uint8), ((80, 80), np.uint16)]
)
def test_each_kind_changes_the_part_only_inside_its_mask(
    kind: str, shape: tuple[int, ...], dtype: type
) -> None:
    part = good_part(shape, dtype)
    for seed in range(5):
        anomaly = synthesize_anomaly(part, kind, np.random.default_rng(seed))
        assert anomaly.image.shape == part.shape and anomaly.image.dtype == part.dtype
        assert anomaly.mask.shape == part.shape[:2] and anomaly.mask.any()
        difference = np.abs(anomaly.image.astype(np.float64) - part)
        if difference.ndim == 3:
            difference = difference.max(axis=2)
        # Anti-aliased and soft edges reach a few pixels past the mask, faintly.
        outside = ~ndimage.binary_dilation(anomaly.mask, iterations=3)
        assert difference[anomaly.mask].max() > 0
        assert difference[outside].max(initial=0) <= 0.02 * np.iinfo(dtype).max
        assert anomaly.mask.mean() < 0.1


def test_one_defect_per_image_kinds_in_turn_reproducible_for_a_seed() -> None:
    parts = [good_part((64, 64), np.uint8)] * 8
    first, again = synthetic_defects(parts, seed=3), synthetic_defects(parts, seed=3)
    assert [a.kind for a in first] == [ANOMALY_KINDS[i % len(ANOMALY_KINDS)] for i in range(8)]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(first, again, strict=True))
    assert not all(
        np.array_equal(a.image, b.image) for a, b in zip(first, synthetic_defects(parts, 4), strict=True)
    )
    with pytest.raises(ValueError, match="unknown synthetic defect 'dent'"):
        synthesize_anomaly(parts[0], "dent", np.random.default_rng(0))


# --- choosing among candidate settings ----------------------------------------------------------------


def trial(auroc: float, ms: float, size: int = 224) -> Trial:
    return Trial(Candidate(size, (4, 5), 1), synthetic_auroc=auroc, synthetic_miss_rate=0.2, ms_per_image=ms)


def test_the_best_synthetic_auroc_wins_and_the_cheapest_of_a_near_tie() -> None:
    clear = [trial(0.90, 40), trial(0.97, 120, 320), trial(0.80, 30)]
    chosen, reason = choose(clear)
    assert chosen is clear[1]
    assert reason.startswith("320 px, stride 16+32, 1x1 neighbourhood: synthetic-defect AUROC 0.970")
    near_tie = [trial(0.970, 120, 320), trial(0.967, 40)]
    chosen, reason = choose(near_tie)
    assert chosen is near_tie[1] and "the cheapest of 2 settings within 0.005 AUROC of the best" in reason


def test_candidate_grid_is_every_combination_cheapest_first() -> None:
    grid = candidate_grid([320, 224], [(3, 4), (4, 5)], [3, 1])
    assert len(grid) == 8
    assert grid[0] == Candidate(224, (4, 5), 1) and grid[-1] == Candidate(320, (3, 4), 3)
    with pytest.raises(ValueError, match="no candidate settings"):
        candidate_grid([], [(4, 5)], [1])


def test_open_settings_are_capped_at_the_cost_of_224_px_at_stride_8_unless_given() -> None:
    from edge_inspect.training.train_patchcore import candidates_for

    chosen_among = candidates_for(None, None, None, select=True)
    assert Candidate(320, (4, 5), 1) in chosen_among and Candidate(224, (3, 4), 3) in chosen_among
    assert all(feature_positions(c) <= 28 * 28 for c in chosen_among)  # 320 px at stride 8 would be 40x40
    assert within_cost(candidate_grid([320], [(3, 4)], [1]), 28 * 28) == []
    # Given explicitly, a dear setting is trained all the same.
    assert candidates_for(320, (3, 4), 1, select=True) == [Candidate(320, (3, 4), 1)]


def test_a_trial_scores_separation_and_misses_at_the_false_reject_target() -> None:
    good = np.linspace(0.0, 1.0, 101)
    defects = np.array([0.5, 2.0, 3.0, 0.2])
    result = score_trial(
        Candidate(224, (4, 5), 1), good, defects, ["spot", "spot", "crack", "crack"], 0.01, 1.0, 5.0, 9
    )
    # The threshold for 1 % of 101 good scores passes all but the highest; 0.5 and 0.2 pass under it.
    assert result.synthetic_miss_rate == 0.5
    assert result.miss_rate_by_kind == {"crack": 0.5, "spot": 0.5}
    # Pairs ranked right: all 101 goods below 2.0 and 3.0; 50 below 0.5 and one tie; 20 below 0.2 and one tie.
    assert result.synthetic_auroc == pytest.approx((101 + 101 + 50.5 + 20.5) / (4 * 101), abs=1e-12)
