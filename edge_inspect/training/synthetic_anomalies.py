"""Synthetic defects drawn on good images, for choosing a good-only model's settings without real defects.

A new product has good parts only, so `edge-inspect train patchcore` compares its candidate settings on
held-out good images and on copies of them carrying one of these defects: scratches, spots, cracks,
stains, missing material and foreign particles. Each is blended into the part with an amplitude scaled
to the image's own contrast and drawn at a random strength, many of them subtle, so that the comparison
rewards the setting that sees small, faint defects rather than one that only sees gross ones.

They are a proxy: what they rank is which setting separates unusual patches from the part's normal
variation best. The real test defects are never looked at.

Pure numpy and OpenCV: (H, W) mono or (H, W, 3) colour images, uint8 or uint16, as the camera sends them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

ANOMALY_KINDS = ("scratch", "spot", "crack", "stain", "missing", "particle")


@dataclass(frozen=True)
class SyntheticAnomaly:
    image: np.ndarray  # same shape and dtype as the good image it was drawn on
    mask: np.ndarray  # bool (H, W): where the defect is
    kind: str


def spread(image: np.ndarray) -> float:
    """Grey-level spread of the part, floored so that flat parts still get a visible defect."""
    full_scale = float(np.iinfo(image.dtype).max) if image.dtype.kind in "ui" else 1.0
    return max(float(image.std()), 0.03 * full_scale)


def strength(rng: np.random.Generator) -> float:
    """A defect's amplitude in units of the part's spread: half are faint (0.5-1), half clear (1-2.5)."""
    return float(rng.uniform(0.5, 1.0) if rng.random() < 0.5 else rng.uniform(1.0, 2.5))


def segment_points(rng: np.random.Generator, shape: tuple[int, int], length: float) -> np.ndarray:
    """Two end points of a straight segment of `length` px that starts inside the middle 80 % of the part."""
    h, w = shape
    start = rng.uniform((0.1 * w, 0.1 * h), (0.9 * w, 0.9 * h))
    angle = rng.uniform(0, np.pi)
    end = start + length * np.array([np.cos(angle), np.sin(angle)])
    return np.rint([start, np.clip(end, 0, (w - 1, h - 1))]).astype(np.int32)


def scratch_stroke(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    side = min(shape)
    stroke = np.zeros(shape, np.float32)
    start, end = segment_points(rng, shape, rng.uniform(0.1, 0.4) * side)
    width = max(1, round(rng.uniform(0.004, 0.012) * side))
    cv2.line(stroke, tuple(map(int, start)), tuple(map(int, end)), 1.0, width, cv2.LINE_AA)
    return stroke


def spot_stroke(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    side = min(shape)
    stroke = np.zeros(shape, np.float32)
    centre = tuple(
        int(c) for c in rng.uniform((0.1 * shape[1], 0.1 * shape[0]), (0.9 * shape[1], 0.9 * shape[0]))
    )
    radius = max(1, round(rng.uniform(0.01, 0.04) * side))
    cv2.circle(stroke, centre, radius, 1.0, -1, cv2.LINE_AA)
    return stroke


def crack_stroke(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """A polyline that turns at random: thin, long, jagged."""
    side = min(shape)
    stroke = np.zeros(shape, np.float32)
    start, _ = segment_points(rng, shape, 1.0)
    heading, step = rng.uniform(0, 2 * np.pi), max(2.0, 0.02 * side)
    points = [start.astype(np.float64)]
    for _ in range(int(rng.uniform(0.1, 0.3) * side / step)):
        heading += rng.normal(0, 0.6)
        points.append(
            np.clip(
                points[-1] + step * np.array([np.cos(heading), np.sin(heading)]),
                0,
                (shape[1] - 1, shape[0] - 1),
            )
        )
    cv2.polylines(stroke, [np.rint(points).astype(np.int32)], False, 1.0, 1, cv2.LINE_AA)
    return stroke


def stain_stroke(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """A soft elliptical blob, strongest in its middle."""
    side = min(shape)
    stroke = np.zeros(shape, np.float32)
    centre = tuple(
        int(c) for c in rng.uniform((0.15 * shape[1], 0.15 * shape[0]), (0.85 * shape[1], 0.85 * shape[0]))
    )
    axes = tuple(max(2, round(a * side)) for a in rng.uniform(0.03, 0.1, 2))
    cv2.ellipse(stroke, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1, cv2.LINE_AA)
    sigma = 0.4 * min(axes)
    return cv2.GaussianBlur(stroke, (0, 0), sigma) if sigma >= 0.5 else stroke


def particle_stroke(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """A small cluster of specks."""
    side = min(shape)
    stroke = np.zeros(shape, np.float32)
    centre = rng.uniform((0.1 * shape[1], 0.1 * shape[0]), (0.9 * shape[1], 0.9 * shape[0]))
    for _ in range(int(rng.integers(1, 6))):
        at = centre + rng.normal(0, 0.03 * side, 2)
        radius = max(1, round(rng.uniform(0.003, 0.012) * side))
        cv2.circle(stroke, (int(at[0]), int(at[1])), radius, 1.0, -1, cv2.LINE_AA)
    return stroke


def missing_material(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A patch of the part replaced by another of its patches, turned and shaded: missing or misplaced
    material whose texture is the part's own (CutPaste, Li et al. 2021), so only its context gives it away."""
    h, w = image.shape[:2]
    side = min(h, w)
    ph, pw = (max(2, round(s * side)) for s in rng.uniform(0.04, 0.12, 2))
    sy, sx = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
    patch = np.rot90(image[sy : sy + ph, sx : sx + pw], int(rng.integers(1, 4))).astype(np.float32)
    ph, pw = patch.shape[:2]
    ty, tx = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
    result = image.astype(np.float32)
    shade = 1.0 + rng.choice([-1.0, 1.0]) * rng.uniform(0.0, 0.3)
    result[ty : ty + ph, tx : tx + pw] = patch * shade
    mask = np.zeros((h, w), bool)
    mask[ty : ty + ph, tx : tx + pw] = True
    return result, mask


STROKES: dict[str, Callable[[np.random.Generator, tuple[int, int]], np.ndarray]] = {
    "scratch": scratch_stroke,
    "spot": spot_stroke,
    "crack": crack_stroke,
    "stain": stain_stroke,
    "particle": particle_stroke,
}


def synthesize_anomaly(image: np.ndarray, kind: str, rng: np.random.Generator) -> SyntheticAnomaly:
    """`image` (a good part) with one defect of `kind` drawn on it."""
    if kind not in ANOMALY_KINDS:
        raise ValueError(f"unknown synthetic defect {kind!r}; known: {', '.join(ANOMALY_KINDS)}")
    if kind == "missing":
        result, mask = missing_material(image, rng)
    else:
        stroke = STROKES[kind](rng, image.shape[:2])
        # Darker or brighter than the part, by a fraction to a few times its own spread.
        sign = -1.0 if kind == "crack" or rng.random() < 0.5 else 1.0
        change = sign * strength(rng) * spread(image) * stroke
        result = image.astype(np.float32) + (change[..., None] if image.ndim == 3 else change)
        mask = stroke > 0.25
    limit = np.iinfo(image.dtype).max if image.dtype.kind in "ui" else 1.0
    return SyntheticAnomaly(np.clip(np.rint(result), 0, limit).astype(image.dtype), mask, kind)


def synthetic_defects(images: Sequence[np.ndarray], seed: int) -> list[SyntheticAnomaly]:
    """One synthetic defect per good image, the kinds taken in turn, reproducible for a seed."""
    rng = np.random.default_rng(seed)
    return [
        synthesize_anomaly(image, ANOMALY_KINDS[i % len(ANOMALY_KINDS)], rng)
        for i, image in enumerate(images)
    ]
