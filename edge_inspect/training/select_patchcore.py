"""Choosing PatchCore's settings for a new product without defect samples.

Each candidate setting (input resolution, feature levels, neighbourhood) gets a memory bank from the
good training images and is scored on the held-out good validation images and on copies of them with
synthetic defects (`synthetic_anomalies`). The candidate that separates the two best (image AUROC) wins;
candidates within `TIE_AUROC` of the best count as tied, and the cheapest of them per image wins, since
the line pays for inference on every part. Real defects, and the test split, are never looked at.

Only stdlib and numpy at module level (the command line reads the candidate grid from here).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_inspect.training.metrics import auroc, miss_rate, threshold_for_frr

if TYPE_CHECKING:
    from edge_inspect.models.patchcore import PatchCore, PatchCoreConfig
    from edge_inspect.training.synthetic_anomalies import SyntheticAnomaly

# Synthetic AUROCs closer than this are within the noise of a few dozen validation images.
TIE_AUROC = 0.005


@dataclass(frozen=True)
class Candidate:
    """One setting `train patchcore` may choose: sizes in input pixels, levels as in PatchCoreConfig."""

    input_size: int
    levels: tuple[int, ...]
    neighbourhood: int

    def describe(self) -> str:
        strides = "+".join(str(2**level) for level in self.levels)
        return (
            f"{self.input_size} px, stride {strides}, {self.neighbourhood}x{self.neighbourhood} neighbourhood"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_size": self.input_size,
            "levels": list(self.levels),
            "neighbourhood": self.neighbourhood,
        }


@dataclass(frozen=True)
class Trial:
    """How one candidate did on held-out good images and their synthetic defects."""

    candidate: Candidate
    synthetic_auroc: float
    # Share of synthetic defects passing at a threshold set on the same good images for the target FRR.
    synthetic_miss_rate: float
    miss_rate_by_kind: dict[str, float] = field(default_factory=dict)
    fit_seconds: float = 0.0
    ms_per_image: float = 0.0
    n_patches: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.candidate.to_dict(),
            "setting": self.candidate.describe(),
            "synthetic_auroc": round(self.synthetic_auroc, 4),
            "synthetic_miss_rate": round(self.synthetic_miss_rate, 4),
            "miss_rate_by_kind": {k: round(v, 4) for k, v in self.miss_rate_by_kind.items()},
            "fit_seconds": round(self.fit_seconds, 1),
            "ms_per_image": round(self.ms_per_image, 1),
            "n_patches": self.n_patches,
        }


def candidate_grid(
    input_sizes: Sequence[int], level_sets: Sequence[tuple[int, ...]], neighbourhoods: Sequence[int]
) -> list[Candidate]:
    """Every combination, cheapest first (smaller inputs, then coarser levels, then less averaging)."""
    grid = [
        Candidate(size, tuple(levels), n)
        for size in sorted(set(input_sizes))
        for levels in sorted(set(map(tuple, level_sets)), key=lambda levels: (-min(levels), len(levels)))
        for n in sorted(set(neighbourhoods))
    ]
    if not grid:
        raise ValueError(
            "no candidate settings to choose from: give at least one size, level set and neighbourhood"
        )
    return grid


def feature_positions(candidate: Candidate) -> int:
    """Patch positions per image at the candidate's finest level: what its bank, search and map cost
    grow with."""
    return (candidate.input_size // 2 ** min(candidate.levels)) ** 2


def within_cost(grid: Sequence[Candidate], max_positions: int) -> list[Candidate]:
    """The candidates that cost no more than `max_positions` patch positions per image."""
    return [candidate for candidate in grid if feature_positions(candidate) <= max_positions]


def choose(trials: Sequence[Trial], tie: float = TIE_AUROC) -> tuple[Trial, str]:
    """The winning trial and why, in words a quality engineer can check against the table."""
    if not trials:
        raise ValueError("no trials to choose from")
    best = max(trial.synthetic_auroc for trial in trials)
    tied = [trial for trial in trials if trial.synthetic_auroc >= best - tie]
    chosen = min(tied, key=lambda trial: trial.ms_per_image)
    reason = (
        f"{chosen.candidate.describe()}: synthetic-defect AUROC {chosen.synthetic_auroc:.3f} "
        f"(best of {len(trials)} settings: {best:.3f}), {chosen.synthetic_miss_rate:.0%} of synthetic "
        f"defects passed at the false-reject target, {chosen.ms_per_image:.0f} ms per image"
    )
    if len(tied) > 1:
        reason += f"; the cheapest of {len(tied)} settings within {tie} AUROC of the best"
    return chosen, reason


def score_trial(
    candidate: Candidate,
    good_scores: np.ndarray,
    defect_scores: np.ndarray,
    kinds: Sequence[str],
    target_frr: float,
    fit_seconds: float,
    ms_per_image: float,
    n_patches: int,
) -> Trial:
    """A candidate's figures from its scores of good validation images and of their synthetic defects."""
    labels = np.r_[np.zeros(good_scores.size, bool), np.ones(defect_scores.size, bool)]
    value = auroc(labels, np.r_[good_scores, defect_scores])
    threshold = threshold_for_frr(good_scores, target_frr)
    by_kind = {
        kind: miss_rate(defect_scores[np.asarray(kinds) == kind], threshold) for kind in sorted(set(kinds))
    }
    return Trial(
        candidate,
        synthetic_auroc=0.5 if value is None else value,
        synthetic_miss_rate=miss_rate(defect_scores, threshold),
        miss_rate_by_kind=by_kind,
        fit_seconds=fit_seconds,
        ms_per_image=ms_per_image,
        n_patches=n_patches,
    )


def try_candidates(
    candidates: Sequence[Candidate],
    base: PatchCoreConfig,
    train_images: Sequence[np.ndarray],
    val_good_images: Sequence[np.ndarray],
    synthetic: Sequence[SyntheticAnomaly],
    target_frr: float,
    progress: bool,
) -> tuple[PatchCore, int, list[Trial], str]:
    """Fit and score every candidate; returns the chosen fitted model, all trials and why it was chosen.

    A single candidate is only fitted: there is nothing to choose, and no trial.
    """
    from dataclasses import replace

    import torch

    from edge_inspect.models.efficientnet_lite0 import CONFIG as LITE0
    from edge_inspect.models.patchcore import build_patchcore
    from edge_inspect.training.patchcore_scoring import FEATURE_BATCH, image_scores, preprocessed_batches

    trials: list[Trial] = []
    # Fitted models that may still win; banks of large inputs take hundreds of megabytes each.
    contenders: dict[Candidate, PatchCore] = {}
    for candidate in candidates:
        config = replace(
            base,
            input_size=candidate.input_size,
            levels=candidate.levels,
            neighbourhood=candidate.neighbourhood,
        )
        recipe = LITE0.recipe(candidate.input_size)
        model = build_patchcore(config=config).to(memory_format=torch.channels_last)
        started = time.perf_counter()
        batches = preprocessed_batches(train_images, recipe, FEATURE_BATCH)
        n_patches = int(model.fit_memory_bank(batches, progress)["n_patches"])
        fit_seconds = time.perf_counter() - started
        if len(candidates) == 1:
            return model, n_patches, [], f"{candidate.describe()}: fixed by the options, nothing to choose"
        started = time.perf_counter()
        good = image_scores(model, val_good_images, recipe, progress)
        defects = image_scores(model, [s.image for s in synthetic], recipe, progress)
        ms_per_image = 1000 * (time.perf_counter() - started) / (len(val_good_images) + len(synthetic))
        trial = score_trial(
            candidate,
            good,
            defects,
            [s.kind for s in synthetic],
            target_frr,
            fit_seconds,
            ms_per_image,
            n_patches,
        )
        trials.append(trial)
        contenders[candidate] = model
        # The best AUROC only grows, so a model out of the tie band now can never be chosen.
        best = max(t.synthetic_auroc for t in trials)
        kept = {t.candidate for t in trials if t.synthetic_auroc >= best - TIE_AUROC}
        contenders = {c: m for c, m in contenders.items() if c in kept}
    chosen, reason = choose(trials)
    return contenders[chosen.candidate], chosen.n_patches, trials, reason
