"""Rules stage: from a model's raw score to a verdict, on one scale for every model family.

Scores are normalised per model so that 0.5 is the calibrated threshold, 0 the score of a clearly
good part and 1 of a clearly bad one (piecewise linear through the card's score_low, threshold and
score_high). Dashboards, the REVIEW band and the quality engineer's rules all read that scale.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edge_inspect.bus.contracts import Defect
from edge_inspect.models.package import Thresholds

NORMALISED_THRESHOLD = 0.5


def normalise_scores(raw: np.ndarray, thresholds: Thresholds) -> np.ndarray:
    """Raw model scores to [0, 1] with the threshold at exactly 0.5."""
    raw = np.asarray(raw, dtype=np.float64)
    t, lo, hi = thresholds.threshold, thresholds.score_low, thresholds.score_high
    below = 0.5 * (raw - lo) / (t - lo)
    above = 0.5 + 0.5 * (raw - t) / (hi - t)
    return np.clip(np.where(raw < t, below, above), 0.0, 1.0)


class QualityRules(BaseModel):
    """The quality engineer's rules on top of the model.

    `min_defect_area_px`: a part whose every defect region is smaller than this is not NG on the map
    alone (sensor dust, tolerable blemishes); 0 disables the rule. `review_band` overrides the model's
    calibrated band when set.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_defect_area_px: int = Field(0, ge=0)
    review_band: float | None = Field(None, ge=0, lt=0.5)

    def band(self, thresholds: Thresholds) -> float:
        return thresholds.review_band if self.review_band is None else self.review_band


def judge(score: float, defects: list[Defect], thresholds: Thresholds, rules: QualityRules) -> str:
    """OK, NG or REVIEW for one part from its normalised score and its defect regions."""
    if abs(score - NORMALISED_THRESHOLD) < rules.band(thresholds):
        return "REVIEW"
    if score < NORMALISED_THRESHOLD:
        return "OK"
    if (
        rules.min_defect_area_px
        and defects
        and all((d.area_px or 0) < rules.min_defect_area_px for d in defects)
    ):
        return "OK"
    return "NG"
