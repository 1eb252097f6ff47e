from __future__ import annotations

import numpy as np
import pytest

from edge_inspect.bus.contracts import Defect
from edge_inspect.inspector.postprocess import defect_regions, heat_map, postprocess
from edge_inspect.inspector.preprocess import PreprocessRecipe
from edge_inspect.inspector.rules import QualityRules, judge, normalise_scores
from edge_inspect.models.package import ModelCard, ModelPackageError, Thresholds

THRESHOLDS = Thresholds(threshold=2.0, score_low=1.0, score_high=6.0, review_band=0.1)


def card(map_output: str | None = None, roi=None) -> ModelCard:
    return ModelCard(
        name="m",
        version="1",
        family="toy",
        preprocess=PreprocessRecipe(10, 20, "mono", (0.0,), (1.0,), roi),
        thresholds=THRESHOLDS,
        map_output=map_output,
        classes=("crack",),
    )


def test_normalisation_puts_the_threshold_at_one_half() -> None:
    raw = np.array([0.0, 1.0, 1.5, 2.0, 4.0, 6.0, 9.0])
    np.testing.assert_allclose(normalise_scores(raw, THRESHOLDS), [0, 0, 0.25, 0.5, 0.75, 1.0, 1.0])


def test_verdicts_with_review_band_and_area_rule() -> None:
    rules = QualityRules()
    assert judge(0.3, [], THRESHOLDS, rules) == "OK"
    assert judge(0.45, [], THRESHOLDS, rules) == "REVIEW"
    assert judge(0.59, [], THRESHOLDS, rules) == "REVIEW"
    assert judge(0.61, [], THRESHOLDS, rules) == "NG"
    assert judge(0.45, [], THRESHOLDS, QualityRules(review_band=0.0)) == "OK"
    tiny = [Defect("crack", 0.9, (0, 0, 2, 2), 4)]
    assert judge(0.9, tiny, THRESHOLDS, QualityRules(min_defect_area_px=10)) == "OK"
    assert (
        judge(
            0.9,
            [*tiny, Defect("crack", 0.9, (0, 0, 5, 5), 25)],
            THRESHOLDS,
            QualityRules(min_defect_area_px=10),
        )
        == "NG"
    )


def test_invalid_thresholds_are_refused() -> None:
    with pytest.raises(ModelPackageError):
        Thresholds(threshold=0.0, score_low=0.0, score_high=1.0)
    with pytest.raises(ModelPackageError):
        Thresholds(threshold=0.5, score_low=0.0, score_high=1.0, review_band=0.6)


def test_defect_regions_are_mapped_to_frame_pixels() -> None:
    amap = np.zeros((10, 20), np.float32)
    amap[2:4, 5:9] = 5.0  # 2x4 map pixels
    amap[8, 0] = 3.0  # a single pixel
    regions = defect_regions(amap, THRESHOLDS.threshold, card(), frame_hw=(100, 400))
    assert len(regions) == 2
    big = regions[0]
    # The frame is 20x the map horizontally and 10x vertically.
    assert big.bbox == (100, 20, 80, 20) and big.area_px == 8 * 200
    assert big.score == pytest.approx(0.875)  # raw 5 on the 2..6 upper half
    with_roi = defect_regions(amap, THRESHOLDS.threshold, card(roi=(50, 60, 40, 20)), frame_hw=(100, 400))
    assert with_roi[0].bbox == (60, 64, 8, 4)


def test_postprocess_examines_maps_only_when_needed() -> None:
    maps = np.zeros((3, 10, 20), np.float32)
    maps[1, 0:2, 0:2] = 9.0
    outputs = {"score": np.array([1.2, 9.0, 2.05], np.float32), "anomaly_map": maps}
    judged = postprocess(outputs, card("anomaly_map"), QualityRules(), [(10, 20)] * 3)
    assert [j.verdict for j in judged] == ["OK", "NG", "REVIEW"]
    assert judged[0].defects == [] and judged[1].defects[0].area_px == 4
    plain = postprocess({"score": np.array([5.0])}, card(), QualityRules(), [(10, 20)])
    assert (
        plain[0].verdict == "NG" and plain[0].defects[0].cls == "crack" and plain[0].defects[0].bbox is None
    )


def test_heat_map_is_the_frame_sized_normalised_map_with_the_threshold_at_128() -> None:
    amap = np.full((10, 20), 1.0, np.float32)  # score_low: normalised 0
    amap[2:4, 5:9] = THRESHOLDS.threshold  # normalised 0.5
    amap[7:10, 0:3] = 6.0  # score_high: normalised 1
    heat = heat_map(amap, card(), frame_hw=(100, 400))
    assert heat.shape == (100, 400) and heat.dtype == np.uint8
    assert heat[30, 140] == 128 and heat[0, 0] == 0 and heat[85, 30] == 255
    # With a region of interest, the map covers only it; the rest of the frame is 0.
    framed = heat_map(amap, card(roi=(50, 60, 40, 20)), frame_hw=(100, 400))
    assert framed[:60].max() == 0 and framed[:, :50].max() == 0 and framed[65, 62] == 128


def test_only_examined_parts_carry_their_anomaly_map() -> None:
    maps = np.random.default_rng(0).random((2, 10, 20)).astype(np.float32)
    outputs = {"score": np.array([1.2, 9.0], np.float32), "anomaly_map": maps}
    ok, ng = postprocess(outputs, card("anomaly_map"), QualityRules(), [(10, 20)] * 2)
    assert ok.anomaly_map is None
    assert ng.anomaly_map is not None and np.array_equal(ng.anomaly_map, maps[1])


def test_non_finite_scores_go_to_a_person_with_the_reason_and_a_real_score() -> None:
    outputs = {"score": np.array([np.nan, np.inf, -np.inf, 5.0])}
    judged = postprocess(outputs, card(), QualityRules(), [(10, 20)] * 4)
    assert [j.verdict for j in judged[:3]] == ["REVIEW"] * 3
    assert all(j.score == 0.5 and j.defects[0].cls == "non_finite_score" for j in judged[:3])
    assert judged[3].verdict == "NG"
