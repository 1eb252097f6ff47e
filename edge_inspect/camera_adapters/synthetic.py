"""Seeded synthetic parts: a turned metal disc on a fixture plate, with optional defects and their masks.

Every part is a pure function of (seed, index), so a run is reproducible and a test can regenerate any
frame it received. The disc carries the cues a real inspection image has (concentric turning marks, a
bore, a bright chamfer, an uneven light, sensor noise), so a model cannot separate good from bad parts
by global brightness alone.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from edge_inspect.camera_adapters.base import SourceFrame

DEFECT_KINDS: tuple[str, ...] = ("scratch", "spot", "crack")
MIN_SIDE = 32
# Grey levels before lighting: a dark matte fixture, a mid-grey turned face, a bright chamfer, a dark bore.
FIXTURE_LEVEL = 55.0
FACE_LEVEL = 130.0
CHAMFER_LEVEL = 185.0
BORE_LEVEL = 25.0
# Pixels where a defect covers at least this fraction are in its mask; the faint anti-aliased rim is not.
MASK_COVERAGE = 0.5


@dataclass(frozen=True)
class _Disc:
    cy: float
    cx: float
    radius: float
    bore: float

    @property
    def inner(self) -> float:
        """Defects stay on the face: clear of the bore's edge and of the outer chamfer."""
        return self.bore * 1.25

    @property
    def outer(self) -> float:
        return self.radius * 0.92

    def on_face(self, points: np.ndarray) -> bool:
        r = np.hypot(points[:, 0] - self.cx, points[:, 1] - self.cy)
        return bool(np.all((r >= self.inner) & (r <= self.outer)))


def synthesize_part(
    rng: np.random.Generator, height: int, width: int, channels: int, defect: str | None
) -> tuple[np.ndarray, np.ndarray]:
    """One part image (uint8, (H, W) mono or (H, W, 3) BGR) and its defect mask (uint8 0/255, (H, W)).

    The defect-free part is drawn from `rng` first and the defect last, so the same generator state with
    and without a defect gives images that differ only around the mask.
    """
    _check_geometry(height, width, channels)
    if defect is not None and defect not in DEFECT_KINDS:
        raise ValueError(f"defect {defect!r} is not one of {DEFECT_KINDS}")

    side = min(height, width)
    radius = side * rng.uniform(0.38, 0.45)
    disc = _Disc(
        cy=height / 2 + rng.uniform(-0.04, 0.04) * side,
        cx=width / 2 + rng.uniform(-0.04, 0.04) * side,
        radius=radius,
        bore=radius * rng.uniform(0.18, 0.28),
    )
    # Broadcast row and column coordinates instead of materialising two full coordinate planes.
    yy = np.arange(height, dtype=np.float32)[:, None]
    xx = np.arange(width, dtype=np.float32)[None, :]
    r = np.hypot(xx - disc.cx, yy - disc.cy)

    fixture = FIXTURE_LEVEL + 8.0 * _smooth_noise(rng, height, width, sigma=side / 60)
    turning_period = rng.uniform(2.5, 5.0)
    face = (
        FACE_LEVEL
        + 6.0 * np.sin(2 * np.pi * r / turning_period + rng.uniform(0, 2 * np.pi))
        + 6.0 * _smooth_noise(rng, height, width, sigma=side / 25)
    )
    face = np.where(r > disc.radius * 0.96, CHAMFER_LEVEL, face)
    # Anti-aliased edges: coverage goes from 1 to 0 across one pixel at each circle.
    disc_cover = np.clip(disc.radius - r + 0.5, 0.0, 1.0)
    bore_cover = np.clip(disc.bore - r + 0.5, 0.0, 1.0)
    grey = fixture * (1 - disc_cover) + face * disc_cover
    grey = grey * (1 - bore_cover) + BORE_LEVEL * bore_cover

    light_angle = rng.uniform(0, 2 * np.pi)
    light_strength = rng.uniform(0.08, 0.18)
    ramp = ((xx - disc.cx) * math.cos(light_angle) + (yy - disc.cy) * math.sin(light_angle)) / side
    grey *= 1.0 + light_strength * ramp
    tint = rng.uniform(0.96, 1.04, size=3).astype(np.float32)
    sensor_noise = rng.standard_normal((height, width), dtype=np.float32) * rng.uniform(2.0, 4.0)

    mask = np.zeros((height, width), np.uint8)
    if defect is not None:
        cover, level = _DEFECT_PAINTERS[defect](rng, disc, height, width)
        grey = grey * (1 - cover) + level * cover
        mask[cover >= MASK_COVERAGE] = 255
    grey += sensor_noise

    mono = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
    if channels == 1:
        return mono, mask
    return cv2.merge([cv2.convertScaleAbs(mono, alpha=float(gain)) for gain in tint]), mask


def _check_geometry(height: int, width: int, channels: int) -> None:
    if height < MIN_SIDE or width < MIN_SIDE:
        raise ValueError(f"synthetic parts need at least {MIN_SIDE}x{MIN_SIDE} pixels, got {width}x{height}")
    if channels not in (1, 3):
        raise ValueError(f"channels={channels} must be 1 (mono) or 3 (BGR)")


def _smooth_noise(rng: np.random.Generator, height: int, width: int, sigma: float) -> np.ndarray:
    """Low-frequency blotches with unit standard deviation: uneven finish, grain of the fixture.

    Drawn on a grid about `sigma` pixels apart and interpolated up: the same look as blurring full-size
    white noise, at a fraction of the cost per frame.
    """
    step = max(2.0 * sigma, 1.0)
    grid = (math.ceil(height / step) + 1, math.ceil(width / step) + 1)
    coarse = rng.standard_normal(grid, dtype=np.float32)
    field = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    return (field - field.mean()) / max(float(field.std()), 1e-6)


def _sample_on_face(
    rng: np.random.Generator,
    disc: _Disc,
    draw: Callable[[np.random.Generator], np.ndarray],
    tries: int = 200,
) -> np.ndarray:
    """Points from `draw(rng)` that lie wholly on the face, by rejection (deterministic for the rng)."""
    for _ in range(tries):
        points = draw(rng)
        if disc.on_face(points):
            return points
    raise ValueError("the part is too small to place this defect on its face; use a larger image")


def _scratch(
    rng: np.random.Generator, disc: _Disc, height: int, width: int
) -> tuple[np.ndarray, float | np.ndarray]:
    """A straight, thin, bright line: tool marks catch the light."""

    def draw(rng: np.random.Generator) -> np.ndarray:
        angle = rng.uniform(0, 2 * np.pi)
        at = rng.uniform(disc.inner, disc.outer)
        start = np.array([disc.cx + at * math.cos(angle), disc.cy + at * math.sin(angle)])
        heading = rng.uniform(0, 2 * np.pi)
        length = rng.uniform(0.15, 0.4) * disc.radius
        steps = np.linspace(0.0, length, 16)[:, None]
        return start + steps * np.array([math.cos(heading), math.sin(heading)])

    points = _sample_on_face(rng, disc, draw)
    thickness = int(rng.integers(1, 3))
    return _stroke(points[[0, -1]], height, width, thickness), 250.0


def _spot(
    rng: np.random.Generator, disc: _Disc, height: int, width: int
) -> tuple[np.ndarray, float | np.ndarray]:
    """A dark, mottled, round pit or corrosion spot with a soft rim."""
    spot_radius = rng.uniform(0.05, 0.1) * disc.radius
    at = rng.uniform(disc.inner + spot_radius, disc.outer - spot_radius)
    angle = rng.uniform(0, 2 * np.pi)
    centre = (disc.cx + at * math.cos(angle), disc.cy + at * math.sin(angle))
    canvas = np.zeros((height, width), np.float32)
    cv2.circle(canvas, _fixed(centre), round(spot_radius * 16), 1.0, -1, cv2.LINE_AA, shift=4)
    cover = cv2.GaussianBlur(canvas, (5, 5), 1.0)
    level = 40.0 + 12.0 * _smooth_noise(rng, height, width, sigma=max(spot_radius / 4, 0.5))
    return cover, level


def _crack(
    rng: np.random.Generator, disc: _Disc, height: int, width: int
) -> tuple[np.ndarray, float | np.ndarray]:
    """A dark, jagged line running outwards from near the bore, as fatigue cracks do."""

    def draw(rng: np.random.Generator) -> np.ndarray:
        angle = rng.uniform(0, 2 * np.pi)
        start_r = disc.inner + rng.uniform(0.0, 0.2) * (disc.outer - disc.inner)
        point = np.array([disc.cx + start_r * math.cos(angle), disc.cy + start_r * math.sin(angle)])
        length = rng.uniform(0.4, 0.75) * (disc.outer - start_r)
        n_steps = int(rng.integers(8, 16))
        points = [point]
        for _ in range(n_steps):
            radial = math.atan2(point[1] - disc.cy, point[0] - disc.cx)
            heading = radial + rng.normal(0.0, 0.45)
            point = point + length / n_steps * np.array([math.cos(heading), math.sin(heading)])
            points.append(point)
        return np.array(points)

    points = _sample_on_face(rng, disc, draw)
    thickness = int(rng.integers(1, 3))
    return _stroke(points, height, width, thickness), 20.0


def _stroke(points: np.ndarray, height: int, width: int, thickness: int) -> np.ndarray:
    """Coverage (0..1) of an anti-aliased polyline through `points` (x, y)."""
    canvas = np.zeros((height, width), np.float32)
    fixed = np.rint(points * 16).astype(np.int32).reshape(-1, 1, 2)
    cv2.polylines(canvas, [fixed], False, 1.0, thickness, cv2.LINE_AA, shift=4)
    return canvas


def _fixed(point: tuple[float, float]) -> tuple[int, int]:
    """A point in OpenCV's sub-pixel fixed point (4 fractional bits)."""
    return round(point[0] * 16), round(point[1] * 16)


_DEFECT_PAINTERS = {"scratch": _scratch, "spot": _spot, "crack": _crack}


@dataclass(frozen=True)
class SyntheticPart:
    part_id: str
    image: np.ndarray
    mask: np.ndarray
    defect: str | None


class SyntheticSource:
    """An endless (or `count`-long) stream of synthetic parts; part `i` depends only on (seed, i)."""

    def __init__(
        self,
        width: int = 640,
        height: int = 480,
        channels: int = 3,
        defect_rate: float = 0.1,
        seed: int = 0,
        count: int | None = None,
    ) -> None:
        _check_geometry(height, width, channels)
        if seed < 0:
            raise ValueError(f"seed={seed} must be >= 0")
        if not 0.0 <= defect_rate <= 1.0:
            raise ValueError(f"defect_rate={defect_rate} must lie in [0, 1]")
        if count is not None and count < 0:
            raise ValueError(f"count={count} must be >= 0 (leave it unset for an endless stream)")
        self.width = width
        self.height = height
        self.channels = channels
        self.defect_rate = defect_rate
        self.seed = seed
        self.count = count

    def part(self, index: int) -> SyntheticPart:
        """Part `index` with its ground truth, the same on every call."""
        rng = np.random.default_rng([self.seed, index])
        defective = rng.random() < self.defect_rate
        defect = DEFECT_KINDS[int(rng.integers(len(DEFECT_KINDS)))] if defective else None
        image, mask = synthesize_part(rng, self.height, self.width, self.channels, defect)
        return SyntheticPart(f"syn-{index:06d}", image, mask, defect)

    def __iter__(self) -> Iterator[SourceFrame]:
        indices = itertools.count() if self.count is None else range(self.count)
        for index in indices:
            part = self.part(index)
            yield SourceFrame(part.image, part.part_id)
