"""Rules stage: from a model's raw score to a verdict, on one scale for every model family.

Scores are normalised per model so that 0.5 is the calibrated threshold, 0 the score of a clearly
good part and 1 of a clearly bad one (piecewise linear through the card's score_low, threshold and
score_high). Dashboards, the REVIEW band and the quality engineer's rules all read that scale.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from edge_inspect.bus.contracts import Defect
from edge_inspect.models.package import Thresholds

if TYPE_CHECKING:
    from edge_inspect.inspector.recipe import Decision, Recipe

NORMALISED_THRESHOLD = 0.5


def normalise_scores(raw: np.ndarray, thresholds: Thresholds) -> np.ndarray:
    """Raw model scores to [0, 1] with the threshold at exactly 0.5."""
    raw = np.asarray(raw, dtype=np.float64)
    t, lo, hi = thresholds.threshold, thresholds.score_low, thresholds.score_high
    below = 0.5 * (raw - lo) / (t - lo)
    above = 0.5 + 0.5 * (raw - t) / (hi - t)
    return np.clip(np.where(raw < t, below, above), 0.0, 1.0)


class QualityRules(BaseModel):
    """The quality engineer's rules on top of the model: `[rules]` of the inspector config.

    `min_defect_area_px`: a part whose every defect region is smaller than this is not NG on the map
    alone (sensor dust, tolerable blemishes); 0 disables the rule. `review_band` overrides the model's
    calibrated band when set. `recipe`: a recipe file (inspector/recipe.py) with the full rules of the
    product (per camera, per class, line alarms), followed while the inspector runs; these two keys are
    its defaults. The file is validated here, so a bad recipe stops the start with its file, line and
    field named.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_defect_area_px: int = Field(0, ge=0)
    review_band: float | None = Field(None, ge=0, lt=0.5)
    recipe: Path | None = None

    @field_validator("recipe")
    @classmethod
    def _recipe_serves(cls, path: Path | None, info: ValidationInfo) -> Path | None:
        if path is not None:
            from edge_inspect.inspector.recipe import load_recipe  # recipe.py builds on this module

            # The two keys above are validated first (field order); a bad one is reported on its own.
            defaults = cls.model_construct(**{k: v for k, v in info.data.items() if k != "recipe"})
            load_recipe(path, defaults)  # RecipeError is a ValueError: reported as rules.recipe
        return path

    def band(self, thresholds: Thresholds) -> float:
        return thresholds.review_band if self.review_band is None else self.review_band


def decide(score: float, defects: list[Defect], thresholds: Thresholds, rules: QualityRules) -> Decision:
    """OK, NG or REVIEW for one part from its normalised score and its defect regions, and the rule that
    decided it: the recipe engine (inspector/recipe.py) with these rules as the whole recipe."""
    from edge_inspect.inspector.recipe import decide as decide_under

    return decide_under(score, defects, "", default_recipe(rules), rules.band(thresholds))


def judge(score: float, defects: list[Defect], thresholds: Thresholds, rules: QualityRules) -> str:
    """OK, NG or REVIEW for one part (see `decide`)."""
    return decide(score, defects, thresholds, rules).verdict


@functools.lru_cache(maxsize=16)
def default_recipe(rules: QualityRules) -> Recipe:
    """The recipe of the config's own rules (no file), built once per rules object: it is asked per part."""
    from edge_inspect.inspector.recipe import from_rules

    return from_rules(rules)
