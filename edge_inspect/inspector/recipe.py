"""Recipes: the quality engineer's rules for one product, in a TOML file the inspector follows while running.

A recipe says, on the normalised score scale of inspector/rules.py (0.5 = the model's threshold):

    product = "elpv-cells"
    review_band = 0.05          # REVIEW when |score - 0.5| < band; default: the model's calibrated band
    min_area_px = 0             # classes without a rule of their own tolerate defects smaller than this
    mm_per_px = 0.2             # pixel size of cameras not listed (needed by min_area_mm2)

    [classes.crack]             # per defect class: min_area_px OR min_area_mm2, and threshold
    min_area_mm2 = 4.0
    threshold = 0.6             # a region whose normalised peak is below this is tolerated (>= 0.5)

    [cameras.cam-1]             # per camera: pixel size, regions of interest, masked-out zones
    mm_per_px = 0.1             # (all in frame pixels: [x, y, width, height])
    roi = { cell = [0, 0, 640, 480] }
    masks = { busbar-1 = [100, 0, 8, 480] }

    [[alarms]]                  # line alarms (inspector/alarms.py)
    name = "ng-burst"
    kind = "window"             # `count` results with `verdict` within `minutes` on one camera
    verdict = "NG"
    count = 5
    minutes = 10

The verdict of a part (`decide`): REVIEW inside the band; OK below the threshold; above it, NG unless
every defect found is dismissed by a rule (outside every ROI, inside a mask, smaller than its class's
minimum area, weaker than its class's threshold): OK then, decided by the rule that dismissed the
largest defect. A defect without a bbox (a classifier's image-level defect) is never dismissed by zones,
nor one without an area by area rules: unknown is not small. Every decision names its rule.

The `[rules]` of the inspector config (QualityRules) is the recipe without a file: its
min_defect_area_px and review_band are the defaults a recipe file overrides.
"""

from __future__ import annotations

import hashlib
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edge_inspect.bus.contracts import Defect
from edge_inspect.logs import log_event

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

if TYPE_CHECKING:
    from edge_inspect.inspector.postprocess import Judgement
    from edge_inspect.inspector.rules import QualityRules
    from edge_inspect.models.package import Thresholds

log = logging.getLogger(__name__)

# The normalised threshold (inspector/rules.py NORMALISED_THRESHOLD); repeated here because rules.py
# imports this module.
THRESHOLD = 0.5

Box = tuple[
    Annotated[int, Field(ge=0)],
    Annotated[int, Field(ge=0)],
    Annotated[int, Field(ge=1)],
    Annotated[int, Field(ge=1)],
]
Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f/:]+$")]


class RecipeError(ValueError):
    """A recipe that cannot serve; the message names the file, line and field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CameraRecipe(_Strict):
    """One camera. With any `roi`, a defect wholly outside all of them is dismissed; a defect wholly
    inside a `masks` zone is dismissed. Zones are named so that results can say which one decided."""

    mm_per_px: float | None = Field(None, gt=0)
    roi: dict[Name, Box] = {}
    masks: dict[Name, Box] = {}


class ClassRule(_Strict):
    """One defect class. `threshold` can only raise the bar: regions are found at the model's threshold,
    so nothing below 0.5 ever reaches the rules."""

    min_area_px: int | None = Field(None, ge=0)
    min_area_mm2: float | None = Field(None, ge=0)
    threshold: float | None = Field(None, ge=THRESHOLD, le=1.0)

    @model_validator(mode="after")
    def _one_area(self) -> ClassRule:
        if self.min_area_px is not None and self.min_area_mm2 is not None:
            raise ValueError("give min_area_px or min_area_mm2, not both")
        return self


class AlarmRule(_Strict):
    """A line alarm on one camera: `count` results with `verdict` within `minutes` of capture time
    (kind "window"), or `count` in a row (kind "consecutive")."""

    name: Name
    kind: Literal["window", "consecutive"]
    verdict: Literal["OK", "NG", "REVIEW"]
    count: int = Field(ge=1, le=100_000)
    minutes: float | None = Field(None, gt=0, le=7 * 24 * 60)

    @model_validator(mode="after")
    def _window_has_minutes(self) -> AlarmRule:
        if (self.kind == "window") != (self.minutes is not None):
            raise ValueError('minutes is needed by kind = "window" and only by it')
        return self


class Recipe(_Strict):
    product: Name = "default"
    review_band: float | None = Field(None, ge=0, lt=THRESHOLD)
    min_area_px: int = Field(0, ge=0)
    mm_per_px: float | None = Field(None, gt=0)
    classes: dict[Name, ClassRule] = {}
    cameras: dict[Annotated[str, Field(min_length=1, max_length=128)], CameraRecipe] = {}
    alarms: list[AlarmRule] = []

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        names = [alarm.name for alarm in self.alarms]
        if len(set(names)) != len(names):
            raise ValueError(f"alarm names must be unique, got {names}")
        mm_classes = [name for name, rule in self.classes.items() if rule.min_area_mm2 is not None]
        if mm_classes and self.mm_per_px is None:
            # Any camera may send a part; an area in mm² needs every camera's pixel size.
            raise ValueError(
                f"classes {mm_classes} give min_area_mm2: set mm_per_px at the top (the pixel size of "
                "cameras not listed, or without their own)"
            )
        return self

    def camera(self, camera_id: str) -> CameraRecipe:
        return self.cameras.get(camera_id) or _NO_CAMERA

    def min_area_px_of(self, cls: str, camera_id: str) -> float:
        rule = self.classes.get(cls)
        if rule is None or (rule.min_area_px is None and rule.min_area_mm2 is None):
            return self.min_area_px
        if rule.min_area_px is not None:
            return rule.min_area_px
        mm_per_px = self.camera(camera_id).mm_per_px or self.mm_per_px or 1.0
        return (rule.min_area_mm2 or 0.0) / (mm_per_px * mm_per_px)


_NO_CAMERA = CameraRecipe()


@dataclass(frozen=True)
class LoadedRecipe:
    """A recipe as it serves: with the file it came from and the sha256 of that file's bytes, which every
    result judged under it records. From the config alone (no file): path and sha256 are None."""

    recipe: Recipe
    path: Path | None = None
    sha256: str | None = None


class Decision(NamedTuple):
    verdict: str
    rule: str


def decide(
    score: float, defects: Sequence[Defect], camera_id: str, recipe: Recipe, model_band: float
) -> Decision:
    """The verdict of one part and the rule that decided it (see the module docstring)."""
    band = model_band if recipe.review_band is None else recipe.review_band
    if abs(score - THRESHOLD) < band:
        return Decision("REVIEW", "review_band")
    if score < THRESHOLD:
        return Decision("OK", "score<threshold")
    dismissed = [dismissal(defect, camera_id, recipe) for defect in defects]
    if dismissed and all(dismissed):
        # Defects come largest first: the rule that dismissed the most significant one decided.
        return Decision("OK", str(dismissed[0]))
    return Decision("NG", "score>=threshold")


def dismissal(defect: Defect, camera_id: str, recipe: Recipe) -> str | None:
    """The rule that makes `defect` tolerable, or None when it counts."""
    camera = recipe.camera(camera_id)
    if defect.bbox is not None:
        if camera.roi and not any(_overlap(defect.bbox, zone) for zone in camera.roi.values()):
            return f"roi:{camera_id}"
        for name, zone in camera.masks.items():
            if _inside(defect.bbox, zone):
                return f"mask:{camera_id}/{name}"
    if defect.area_px is not None and defect.area_px < recipe.min_area_px_of(defect.cls, camera_id):
        return f"min_area:{defect.cls}"
    rule = recipe.classes.get(defect.cls)
    if rule is not None and rule.threshold is not None and defect.score < rule.threshold:
        return f"class_threshold:{defect.cls}"
    return None


def _inside(box: tuple[int, int, int, int], zone: tuple[int, int, int, int]) -> bool:
    x, y, w, h = box
    zx, zy, zw, zh = zone
    return x >= zx and y >= zy and x + w <= zx + zw and y + h <= zy + zh


def _overlap(box: tuple[int, int, int, int], zone: tuple[int, int, int, int]) -> bool:
    x, y, w, h = box
    zx, zy, zw, zh = zone
    return x < zx + zw and zx < x + w and y < zy + zh and zy < y + h


def apply_recipe(judgement: Judgement, camera_id: str, recipe: Recipe, thresholds: Thresholds) -> Decision:
    """Re-decide a postprocessed part under `recipe` for its camera. A part that could not be judged (a
    non-finite score, a failed stage) keeps its REVIEW and its reason."""
    if judgement.rule in UNJUDGED_RULES or judgement.rule.endswith("_error"):
        return Decision(judgement.verdict, judgement.rule)
    return decide(judgement.score, judgement.defects, camera_id, recipe, thresholds.review_band)


UNJUDGED_RULES: frozenset[str] = frozenset({"non_finite_score"})


def from_rules(rules: QualityRules) -> Recipe:
    """The recipe of a config without a recipe file: QualityRules' two rules."""
    return Recipe(review_band=rules.review_band, min_area_px=rules.min_defect_area_px)


def load_recipe(path: Path, defaults: QualityRules | None = None) -> LoadedRecipe:
    """Read and validate a recipe file; RecipeError naming the file, line and field otherwise. The
    config's rules (`defaults`) fill what the file leaves out."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RecipeError(f"{path}: cannot read the recipe ({exc.strerror}); check the path") from None
    return parse_recipe(raw, path, defaults)


def parse_recipe(raw: bytes, path: Path, defaults: QualityRules | None = None) -> LoadedRecipe:
    try:
        text = raw.decode("utf-8")
        data = tomllib.loads(text)
    except UnicodeDecodeError as exc:
        raise RecipeError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{path}: not valid TOML: {exc}") from None
    merged: dict[str, Any] = dict(data)
    if defaults is not None:
        merged.setdefault("review_band", defaults.review_band)
        merged.setdefault("min_area_px", defaults.min_defect_area_px)
    try:
        recipe = Recipe.model_validate(merged)
    except ValidationError as exc:
        from edge_inspect.inspector.toml_errors import describe_errors

        lines = describe_errors(exc, path, text, Recipe)
        raise RecipeError("invalid recipe:\n  " + "\n  ".join(lines)) from None
    return LoadedRecipe(recipe, path, hashlib.sha256(raw).hexdigest())


class RecipeHolder:
    """The recipe in force, followed from its file: `current()` re-reads the file at most every `poll_s`
    (by `clock`), `check()` at once. A changed file is loaded and logged (`recipe_loaded`, with its
    hash); one with an error is refused (`recipe_refused`, counted in `refused`) and the old recipe
    keeps serving. Comparing the file's bytes (not its mtime) makes a rewrite within the file system's
    time resolution visible too, and a refused file is logged once, not at every poll.

    Used by one thread (the infer stage); other threads may read `loaded` (a reference swapped whole).
    """

    def __init__(
        self,
        path: Path,
        defaults: QualityRules | None = None,
        poll_s: float = 2.0,
        clock: Callable[[], float] | None = None,
        on_reload: Callable[[str], None] | None = None,
    ) -> None:
        import time

        self.path = Path(path)
        self._defaults = defaults
        self._poll_s = poll_s
        self._clock = clock or time.monotonic
        self._on_reload = on_reload
        # At start there is no old recipe to keep: an error stops the inspector (RecipeError).
        self.loaded = load_recipe(self.path, defaults)
        self._seen = self.loaded.sha256
        self._next_check = self._clock() + poll_s
        self.refused = 0
        self._log_loaded()

    def current(self) -> LoadedRecipe:
        now = self._clock()
        if now >= self._next_check:
            self._next_check = now + self._poll_s
            self.check()
        return self.loaded

    def check(self) -> bool:
        """Reload now if the file changed; True when a new recipe took over."""
        raw = self._read()
        digest = hashlib.sha256(raw).hexdigest() if raw is not None else None
        if digest == self._seen:
            return False
        self._seen = digest
        try:
            if raw is None:
                loaded = load_recipe(self.path, self._defaults)  # raises, saying why it cannot be read
            else:
                loaded = parse_recipe(raw, self.path, self._defaults)
        except RecipeError as exc:
            self.refused += 1
            log_event(
                log,
                logging.ERROR,
                "recipe_refused",
                path=str(self.path),
                error=str(exc),
                kept=self.loaded.sha256,
            )
            self._notify("refused")
            return False
        self.loaded = loaded
        self._log_loaded()
        self._notify("loaded")
        return True

    def _read(self) -> bytes | None:
        try:
            return self.path.read_bytes()
        except OSError:
            return None  # load_recipe reports it, naming the path

    def _log_loaded(self) -> None:
        recipe = self.loaded.recipe
        log_event(
            log,
            logging.WARNING,  # a change of the rules that judge parts is always worth a line
            "recipe_loaded",
            path=str(self.path),
            sha256=self.loaded.sha256,
            product=recipe.product,
            classes=sorted(recipe.classes),
            cameras=sorted(recipe.cameras),
            alarms=[alarm.name for alarm in recipe.alarms],
        )

    def _notify(self, outcome: str) -> None:
        if self._on_reload is not None:
            self._on_reload(outcome)
