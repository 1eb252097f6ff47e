"""Recipes: loading, errors that name file, line and field, reloading, and every rule deciding."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from edge_inspect.bus.contracts import Defect, FrameHeader, InspectionResult, ModelRef
from edge_inspect.inspector.config import ConfigError, load_config
from edge_inspect.inspector.preprocess import PreprocessRecipe
from edge_inspect.inspector.receive import ReceivedFrame
from edge_inspect.inspector.recipe import (
    Recipe,
    RecipeError,
    RecipeHolder,
    apply_recipe,
    decide,
    load_recipe,
)
from edge_inspect.inspector.rules import QualityRules, judge
from edge_inspect.inspector.stages.infer import judge as judge_batch
from edge_inspect.inspector.stages.infer import outcomes
from edge_inspect.inspector.stages.prepare import PreparedBatch
from edge_inspect.models.package import ModelCard, Thresholds

SAMPLE = Path(__file__).resolve().parent.parent / "config" / "recipes" / "elpv-cells.toml"
THRESHOLDS = Thresholds(threshold=2.0, score_low=1.0, score_high=6.0, review_band=0.1)


def recipe_of(**fields: object) -> Recipe:
    return Recipe.model_validate(fields)


def test_the_sample_recipe_loads_with_the_hash_of_its_bytes() -> None:
    loaded = load_recipe(SAMPLE)
    assert loaded.sha256 == hashlib.sha256(SAMPLE.read_bytes()).hexdigest()
    recipe = loaded.recipe
    assert recipe.product == "elpv-cells" and recipe.review_band == 0.05
    assert recipe.camera("cam-1").masks["busbar-1"] == (98, 0, 6, 300)
    assert [alarm.name for alarm in recipe.alarms] == ["ng-burst", "review-streak"]


def test_errors_name_the_file_line_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        'product = "x"\n'
        "[classes.crack]\n"
        "min_area_px = -1\n"
        "[cameras.cam-1]\n"
        "mm_per_pix = 0.1\n"
        "[[alarms]]\n"
        'name = "a"\nkind = "consecutive"\nverdict = "NG"\ncount = 2\n'
        "[[alarms]]\n"
        'name = "b"\nkind = "window"\nverdict = "NG"\ncount = 0\nminutes = 5\n'
    )
    with pytest.raises(RecipeError) as caught:
        load_recipe(bad)
    message = str(caught.value)
    assert f"{bad}:3: classes.crack.min_area_px: Input should be greater than or equal to 0" in message
    assert f"{bad}:5: cameras.cam-1.mm_per_pix: unknown key; known keys: mm_per_px, roi, masks" in message
    assert f"{bad}:15: alarms.1.count: Input should be greater than or equal to 1" in message


def test_syntax_errors_and_inconsistent_rules_are_refused(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text('product = "x"\n[classes.crack\n')
    with pytest.raises(RecipeError, match=r"broken.toml: not valid TOML: .*line 2"):
        load_recipe(broken)
    mm = tmp_path / "mm.toml"
    mm.write_text("[classes.crack]\nmin_area_mm2 = 2.0\n")
    with pytest.raises(RecipeError, match=r"mm.toml: \(top level\): .*set mm_per_px at the top"):
        load_recipe(mm)
    both = tmp_path / "both.toml"
    both.write_text("mm_per_px = 0.1\n[classes.crack]\nmin_area_mm2 = 2.0\nmin_area_px = 3\n")
    with pytest.raises(RecipeError, match=r"both.toml:2: classes.crack: give min_area_px or min_area_mm2"):
        load_recipe(both)
    with pytest.raises(
        RecipeError, match=r"low.toml:2: classes.crack.threshold: .*greater than or equal to 0.5"
    ):
        low = tmp_path / "low.toml"
        low.write_text("[classes.crack]\nthreshold = 0.3\n")
        load_recipe(low)


def test_the_config_refuses_a_bad_recipe_naming_both_files(tmp_path: Path) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_text("review_band = 0.7\n")
    config = tmp_path / "line.toml"
    config.write_text(f'[model]\npackage = "m"\n[rules]\nrecipe = "{recipe}"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    message = str(caught.value)
    assert f"{config}:4: rules.recipe: invalid recipe:" in message and f"{recipe}:1: review_band" in message
    recipe.write_text(SAMPLE.read_text())
    assert load_config(config).rules.recipe == recipe


def test_a_bad_reload_keeps_the_old_recipe_and_a_good_one_takes_over(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "r.toml"
    path.write_text('product = "one"\nmin_area_px = 10\n')
    now = [0.0]
    outcomes_seen: list[str] = []
    holder = RecipeHolder(path, poll_s=2.0, clock=lambda: now[0], on_reload=outcomes_seen.append)
    first = holder.loaded
    assert holder.check() is False  # unchanged
    path.write_text('product = "two"\nmin_area_px = -5\n')
    with caplog.at_level(logging.ERROR, logger="edge_inspect.inspector.recipe"):
        assert holder.check() is False
        assert holder.check() is False  # the same bad file is refused once, not at every poll
    assert holder.loaded is first and holder.refused == 1 and outcomes_seen == ["refused"]
    refused = [r for r in caplog.records if r.getMessage() == "recipe_refused"]
    assert len(refused) == 1 and f"{path}:2: min_area_px" in refused[0].fields["error"]
    path.write_text('product = "two"\nmin_area_px = 5\n')
    assert holder.current() is first  # not yet time to look
    now[0] = 2.0
    assert holder.current().recipe.product == "two"
    assert holder.loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert outcomes_seen == ["refused", "loaded"]
    path.unlink()
    assert holder.check() is False and holder.loaded.recipe.product == "two" and holder.refused == 2


def test_every_rule_decides_and_says_so() -> None:
    recipe = recipe_of(
        review_band=0.05,
        mm_per_px=0.5,
        classes={"crack": {"min_area_mm2": 2.0}, "scratch": {"min_area_px": 40, "threshold": 0.7}},
        cameras={
            "cam-1": {
                "mm_per_px": 0.1,
                "roi": {"cell": (0, 0, 100, 100)},
                "masks": {"zone-2": (10, 10, 20, 20)},
            }
        },
    )

    def verdict(score: float, *defects: Defect, camera: str = "cam-1") -> tuple[str, str]:
        return tuple(decide(score, list(defects), camera, recipe, model_band=0.1))  # type: ignore[return-value]

    crack = Defect("crack", 0.9, (50, 50, 20, 15), 300)  # 3 mm² at 0.1 mm/px
    assert verdict(0.52, crack) == ("REVIEW", "review_band")
    assert verdict(0.3) == ("OK", "score<threshold")
    assert verdict(0.9, crack) == ("NG", "score>=threshold")
    assert verdict(0.9, Defect("crack", 0.9, (12, 12, 5, 5), 25)) == ("OK", "mask:cam-1/zone-2")
    assert verdict(0.9, Defect("crack", 0.9, (150, 150, 5, 5), 25)) == ("OK", "roi:cam-1")
    assert verdict(0.9, Defect("scratch", 0.9, (50, 50, 5, 5), 25)) == ("OK", "min_area:scratch")
    assert verdict(0.9, Defect("scratch", 0.65, (50, 50, 9, 9), 81)) == ("OK", "class_threshold:scratch")
    # A classifier's image-level defect has no place or size: zones and areas cannot dismiss it.
    assert verdict(0.9, Defect("crack", 0.9)) == ("NG", "score>=threshold")
    # The largest defect's rule decides when every defect is dismissed; one that counts makes it NG.
    masked, small = Defect("crack", 0.9, (12, 12, 5, 5), 25), Defect("scratch", 0.9, (60, 60, 2, 2), 4)
    assert verdict(0.9, masked, small) == ("OK", "mask:cam-1/zone-2")
    assert verdict(0.9, masked, crack) == ("NG", "score>=threshold")


def test_min_area_in_square_millimetres_uses_each_cameras_pixel_size() -> None:
    recipe = recipe_of(
        mm_per_px=0.5, classes={"crack": {"min_area_mm2": 2.0}}, cameras={"near": {"mm_per_px": 0.1}}
    )
    # 2 mm² is 200 px at 0.1 mm/px, 8 px at the default 0.5 mm/px.
    defect = Defect("crack", 0.9, None, 100)
    assert decide(0.9, [defect], "near", recipe, 0.1) == ("OK", "min_area:crack")
    assert decide(0.9, [defect], "far", recipe, 0.1) == ("NG", "score>=threshold")
    assert decide(0.9, [Defect("crack", 0.9, None, 7)], "far", recipe, 0.1) == ("OK", "min_area:crack")


def test_quality_rules_alone_decide_as_before() -> None:
    rules = QualityRules(min_defect_area_px=10)
    tiny = Defect("crack", 0.9, (0, 0, 2, 2), 4)
    assert judge(0.9, [tiny], THRESHOLDS, rules) == "OK"
    assert judge(0.45, [], THRESHOLDS, rules) == "REVIEW"  # the model's band: 0.1
    assert judge(0.45, [], THRESHOLDS, QualityRules(review_band=0.0)) == "OK"
    # A recipe file fills what it leaves out from the config's rules.
    assert Recipe.model_validate({"min_area_px": 10}).min_area_px == rules.min_defect_area_px


def test_unjudged_parts_keep_their_reason() -> None:
    from edge_inspect.inspector.postprocess import non_finite

    judgement = non_finite(float("nan"))
    assert apply_recipe(judgement, "cam-1", Recipe(), THRESHOLDS) == ("REVIEW", "non_finite_score")


def card() -> ModelCard:
    return ModelCard(
        name="m",
        version="1",
        family="toy",
        preprocess=PreprocessRecipe(10, 20, "mono", (0.0,), (1.0,), None),
        thresholds=THRESHOLDS,
        classes=("crack",),
    )


def test_results_record_the_rule_and_the_recipe_hash() -> None:
    loaded = load_recipe(SAMPLE)
    frames = [
        ReceivedFrame(FrameHeader(camera, seq, "st", 0, 4, 2, 1), memoryview(bytes(8)), 1_000_000)
        for seq, camera in enumerate(["cam-1", "cam-1", "cam-1", "cam-2"])
    ]
    ref = ModelRef("m", "1", "abc")
    active = SimpleNamespace(card=card(), ref=ref, device="cpu")
    prepared = PreparedBatch(
        active, frames, [np.zeros((2, 4, 1), np.uint8)] * 4, [0.1] * 4, np.zeros((4, 1, 2, 4)), 0.5, 2_000_000
    )

    def run(active: object, inputs: object) -> dict:
        return {"score": np.array([1.2, 2.05, 2.48, 5.0])}  # normalised 0.1, 0.525, 0.56, 0.875

    judged = judge_batch(prepared, run, QualityRules(), loaded)
    results = [o.result for o in outcomes(prepared, judged, 3_000_000, 0.0)]
    assert [(r.verdict, r.rule) for r in results] == [
        ("OK", "score<threshold"),
        ("REVIEW", "review_band"),
        ("NG", "score>=threshold"),  # the recipe's band, 0.05, not the model's 0.1
        ("NG", "score>=threshold"),
    ]
    assert {r.recipe for r in results} == {loaded.sha256}
    again = InspectionResult.from_dict(results[3].to_dict())
    assert (again.rule, again.recipe) == ("score>=threshold", loaded.sha256)
    old = results[0].to_dict()
    del old["rule"], old["recipe"]  # a result recorded before these fields existed
    assert InspectionResult.from_dict(old).rule is None
