"""Postprocess stage: model outputs to per-part scores, defect regions and verdicts.

A model that gives an anomaly map (at its input resolution) gets its defects as connected regions
above the threshold, with bbox and area mapped back to frame pixels; a plain classifier gets one
image-level defect. Maps are only examined for parts that are not clearly OK.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import cv2
import numpy as np

from edge_inspect.bus.contracts import Defect
from edge_inspect.inspector.rules import NORMALISED_THRESHOLD, QualityRules, decide, normalise_scores
from edge_inspect.models.package import ModelCard


@dataclass(frozen=True)
class Judgement:
    """One part's verdict; `rule` names what decided it (inspector/recipe.py), or why it was not judged."""

    raw_score: float
    score: float
    verdict: str
    defects: list[Defect]
    rule: str = ""
    # The part's anomaly map on the model's grid, when the model has one and the part was examined (not
    # clearly OK): archived beside the image as a heat map for the people who judge it.
    anomaly_map: np.ndarray | None = field(default=None, compare=False, repr=False)


def non_finite(raw_score: float) -> Judgement:
    """A NaN or infinite model score judges nothing: the part goes to a person, recorded at the threshold
    (undecided) with the reason, so the row keeps a real score in every store."""
    reason = Defect(cls="non_finite_score", score=1.0)
    return Judgement(raw_score, NORMALISED_THRESHOLD, "REVIEW", [reason], "non_finite_score")


def defect_regions(
    anomaly_map: np.ndarray,
    pixel_threshold: float,
    card: ModelCard,
    frame_hw: tuple[int, int],
) -> list[Defect]:
    """Connected regions of `anomaly_map >= pixel_threshold`, in frame coordinates, largest first."""
    mask = (anomaly_map >= pixel_threshold).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    roi = card.preprocess.roi or (0, 0, frame_hw[1], frame_hw[0])
    sx = roi[2] / anomaly_map.shape[1]
    sy = roi[3] / anomaly_map.shape[0]
    regions = []
    for label in range(1, count):
        x, y, w, h, area = (int(v) for v in stats[label])
        peak = float(anomaly_map[labels == label].max())
        regions.append(
            Defect(
                cls=card.classes[0],
                score=float(normalise_scores(np.array([peak]), card.thresholds)[0]),
                bbox=(
                    int(roi[0] + x * sx),
                    int(roi[1] + y * sy),
                    max(1, round(w * sx)),
                    max(1, round(h * sy)),
                ),
                area_px=max(1, round(area * sx * sy)),
            )
        )
    return sorted(regions, key=lambda d: d.area_px or 0, reverse=True)


def heat_map(anomaly_map: np.ndarray, card: ModelCard, frame_hw: tuple[int, int]) -> np.ndarray:
    """The anomaly map as an 8-bit image the size of the frame, for people: each pixel's normalised score
    times 255, so 128 is the threshold a defect region starts at; 0 outside the model's region of interest.
    """
    roi = card.preprocess.roi or (0, 0, frame_hw[1], frame_hw[0])
    levels = np.round(normalise_scores(anomaly_map, card.thresholds) * 255).astype(np.uint8)
    heat = np.zeros(frame_hw, np.uint8)
    heat[roi[1] : roi[1] + roi[3], roi[0] : roi[0] + roi[2]] = cv2.resize(
        levels, (roi[2], roi[3]), interpolation=cv2.INTER_LINEAR
    )
    return heat


def part_scores(score_output: np.ndarray, card: ModelCard) -> tuple[np.ndarray, np.ndarray]:
    """The batch's raw scores (float64, one per part) and their normalised values."""
    raw_scores = np.asarray(score_output, dtype=np.float64).reshape(-1)
    return raw_scores, normalise_scores(raw_scores, card.thresholds)


def clearly_ok(score: float, card: ModelCard, rules: QualityRules) -> bool:
    """Below the REVIEW band: an OK part whose anomaly map, if any, is never examined."""
    return score < NORMALISED_THRESHOLD - rules.band(card.thresholds)


def examined_rows(score_output: np.ndarray, card: ModelCard, rules: QualityRules) -> list[int]:
    """The batch rows whose anomaly map `postprocess` reads: those of the parts not clearly OK."""
    _, scores = part_scores(score_output, card)
    return [row for row, score in enumerate(scores) if not clearly_ok(float(score), card, rules)]


def postprocess(
    outputs: Mapping[str, np.ndarray | Mapping[int, np.ndarray]],
    card: ModelCard,
    rules: QualityRules,
    frame_hws: list[tuple[int, int]],
) -> list[Judgement]:
    """Judge a batch. The map output may be the whole (N, ...) array or only the `examined_rows`, by row
    index (what a device runtime copies back), since no other row is read."""
    raw_scores, scores = part_scores(outputs[card.score_output], card)
    maps = outputs.get(card.map_output) if card.map_output else None
    judgements = []
    for i, (raw, score) in enumerate(zip(raw_scores, scores, strict=True)):
        if not np.isfinite(raw):
            judgements.append(non_finite(float(raw)))
            continue
        anomaly_map = None
        if clearly_ok(float(score), card, rules):
            defects: list[Defect] = []
        elif maps is not None:
            anomaly_map = np.asarray(maps[i]).squeeze()
            defects = defect_regions(anomaly_map, card.thresholds.threshold, card, frame_hws[i])
        else:
            defects = [Defect(cls=card.classes[0], score=float(score))]
        verdict, rule = decide(float(score), defects, card.thresholds, rules)
        judgements.append(Judgement(float(raw), float(score), verdict, defects, rule, anomaly_map))
    return judgements
