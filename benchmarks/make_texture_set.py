"""The texture onboarding set: textured-surface categories in the MVTec AD layout, built reproducibly.

    python -m benchmarks.make_texture_set --out var/texture-set [--train 200] [--test-good 40]
        [--per-defect 10] [--categories brick,gravel]

Each category gets `train/good`, `test/good`, `test/<defect type>` and `ground_truth/<type>/NNN_mask.png`,
and the whole set a `manifest.json` (sources, licences, seed, counts, the development / held-out split).

Sources, all installed offline: scikit-image's bundled CC0 photographs (`brick`, `grass`, `gravel`: train
crops from the upper 320 rows, test crops from the lower 192, so no test pixel was ever seen in
training), and procedural surfaces drawn here from seeded noise (`fabric`, `paper`, `wood`, `stone`,
`metal`), a new independent sample per image.

Defects are small and blended into the surface with an amplitude set by the surface's own contrast:
scratches (thin curves), cracks (jagged dark branching walks), stains (soft-edged tinted blobs), holes
(missing material: a dark irregular pit with a shaded rim) and foreign particles (a few specks or a
fibre). Their drawing code is deliberately independent of the trainer's synthetic anomalies
(`edge_inspect.training.synthetic_anomalies`), so that choosing a configuration on those is not choosing
it on these.

Development categories (`DEV_CATEGORIES`) may be looked at while developing a recipe; the held-out ones
(`HELD_OUT_CATEGORIES`) are only ever evaluated, never used for a tuning decision.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

SEED = 20261201
PROCEDURAL_SIZE = 192
PHOTO_CROP = 160
# Photographs: rows [0, 320) give training crops, rows [320, 512) test crops.
PHOTO_TRAIN_ROWS, PHOTO_TEST_ROWS = (0, 320), (320, 512)
DEFECT_TYPES = ("scratch", "crack", "stain", "hole", "particle")
DEV_CATEGORIES = ("brick", "fabric", "paper")
HELD_OUT_CATEGORIES = ("gravel", "grass", "wood", "stone", "metal")
SPLIT_CODES = {"train": 0, "test": 1}

Surface = Callable[[np.random.Generator, str], np.ndarray]


# --- surfaces ----------------------------------------------------------------------------------------


def unit_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: tuple[float, float]) -> np.ndarray:
    """Gaussian noise smoothed with (row, column) sigmas, scaled to zero mean and unit deviation."""
    field = ndimage.gaussian_filter(rng.normal(size=shape), sigma, mode="wrap")
    return (field - field.mean()) / (field.std() + 1e-12)


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def photo_surface(name: str) -> Surface:
    """Crops of a scikit-image texture photograph, from the split's own rows, with capture jitter."""

    def draw(rng: np.random.Generator, split: str) -> np.ndarray:
        from skimage import data

        texture = getattr(data, name)().astype(np.float64)
        top, bottom = PHOTO_TRAIN_ROWS if split == "train" else PHOTO_TEST_ROWS
        y = int(rng.integers(top, bottom - PHOTO_CROP + 1))
        x = int(rng.integers(0, texture.shape[1] - PHOTO_CROP + 1))
        crop = texture[y : y + PHOTO_CROP, x : x + PHOTO_CROP]
        # Exposure and sensor noise vary from capture to capture.
        gain, offset = rng.uniform(0.94, 1.06), rng.uniform(-6, 6)
        return crop * gain + offset + rng.normal(0, 1.5, crop.shape)

    return draw


def fabric(rng: np.random.Generator, split: str) -> np.ndarray:
    """Plain weave: alternating warp and weft threads, each with its own shade, rounded, with fibre fuzz."""
    size, period = PROCEDURAL_SIZE, 8
    shift = rng.integers(0, period, 2)
    y, x = np.mgrid[:size, :size] + shift[:, None, None]
    rows, cols = y // period, x // period
    warp_on_top = (rows + cols) % 2 == 0
    warp_shade = rng.normal(0, 6, size // period + 2)[cols]
    weft_shade = rng.normal(0, 6, size // period + 2)[rows]
    across_warp = np.sin(np.pi * (x % period + 0.5) / period)
    across_weft = np.sin(np.pi * (y % period + 0.5) / period)
    warp = 150 + warp_shade + 40 * (across_warp - 0.6)
    weft = 120 + weft_shade + 40 * (across_weft - 0.6)
    fuzz = 6 * unit_noise(rng, (size, size), (0.7, 0.7))
    return np.where(warp_on_top, warp, weft) + fuzz + 8 * unit_noise(rng, (size, size), (24, 24))


def paper(rng: np.random.Generator, split: str) -> np.ndarray:
    """Paper: cloudy formation at a few scales and faint fibres in every direction."""
    size = PROCEDURAL_SIZE
    image = 190 + 9 * unit_noise(rng, (size, size), (10, 10)) + 5 * unit_noise(rng, (size, size), (2, 2))
    fibres = np.zeros((size, size), np.float32)
    for _ in range(140):
        x0, y0 = rng.uniform(0, size, 2)
        angle, length = rng.uniform(0, np.pi), rng.uniform(6, 22)
        x1, y1 = x0 + length * np.cos(angle), y0 + length * np.sin(angle)
        cv2.line(fibres, (int(x0), int(y0)), (int(x1), int(y1)), float(rng.uniform(0.4, 1.0)), 1, cv2.LINE_AA)
    return image - 7 * fibres + rng.normal(0, 1.5, (size, size))


def wood(rng: np.random.Generator, split: str) -> np.ndarray:
    """Flat-sawn wood: growth rings around a distant pith, bent by slow turbulence, with fine pores."""
    size = PROCEDURAL_SIZE
    y, x = np.mgrid[:size, :size].astype(np.float64)
    centre = rng.uniform(-4, -2) * size, rng.uniform(0.2, 0.8) * size
    radius = np.hypot(x - centre[0], (y - centre[1]) * rng.uniform(3, 5))
    bent = radius + 25 * unit_noise(rng, (size, size), (30, 60))
    period = rng.uniform(14, 20)
    rings = 0.5 + 0.5 * np.sin(2 * np.pi * bent / period)
    pores = unit_noise(rng, (size, size), (0.6, 5))
    return 120 + 35 * rings**3 + 5 * pores + 6 * unit_noise(rng, (size, size), (40, 40))


def stone(rng: np.random.Generator, split: str) -> np.ndarray:
    """Granite: grains (Voronoi cells) of three minerals, each grain mottled, and a polish glint."""
    size = PROCEDURAL_SIZE
    seeds = rng.uniform(0, size, (int(size * size / 60), 2))
    grid = np.stack(np.mgrid[:size, :size], axis=-1).reshape(-1, 2)
    _, grain = cKDTree(seeds).query(grid)
    minerals = rng.choice([70.0, 150.0, 200.0], size=len(seeds), p=[0.25, 0.45, 0.30])
    shade = minerals + rng.normal(0, 10, len(seeds))
    image = shade[grain].reshape(size, size)
    image = ndimage.gaussian_filter(image, 0.6)
    return image + 6 * unit_noise(rng, (size, size), (1, 1)) + 5 * unit_noise(rng, (size, size), (50, 50))


def metal(rng: np.random.Generator, split: str) -> np.ndarray:
    """Brushed / machined steel: long streaks along the tool path and an uneven light falloff."""
    size = PROCEDURAL_SIZE
    streaks = unit_noise(rng, (size, size), (0.6, 30))
    fine = unit_noise(rng, (size, size), (0.5, 4))
    y, x = np.mgrid[:size, :size] / size
    light = 25 * np.cos(np.pi * (x - rng.uniform(0.2, 0.8))) + 10 * (y - 0.5)
    return 130 + light + 12 * streaks + 5 * fine + rng.normal(0, 1.5, (size, size))


SURFACES: dict[str, Surface] = {
    "brick": photo_surface("brick"),
    "grass": photo_surface("grass"),
    "gravel": photo_surface("gravel"),
    "fabric": fabric,
    "paper": paper,
    "wood": wood,
    "stone": stone,
    "metal": metal,
}
SOURCES = {
    **{name: "scikit-image data (CC0 photograph; see skimage.data)" for name in ("brick", "grass", "gravel")},
    **{name: "procedural (this script)" for name in ("fabric", "paper", "wood", "stone", "metal")},
}


# --- defects -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Defect:
    image: np.ndarray  # float64, the surface with the defect
    mask: np.ndarray  # bool, where it is


def contrast(surface: np.ndarray) -> float:
    """The surface's own grey-level spread: defects are as strong as a fraction of it to a few times it,
    so they are neither invisible on busy textures nor glaring on calm ones."""
    return float(np.clip(surface.std(), 6.0, 40.0))


def place(rng: np.random.Generator, size: int, margin: float = 0.15) -> np.ndarray:
    return rng.uniform(margin * size, (1 - margin) * size, 2)


def bezier(rng: np.random.Generator, size: int, length: float) -> np.ndarray:
    """Points along a gently curved quadratic Bezier of about `length` px."""
    start = place(rng, size)
    angle = rng.uniform(0, 2 * np.pi)
    end = np.clip(start + length * np.array([np.cos(angle), np.sin(angle)]), 2, size - 3)
    bend = (start + end) / 2 + rng.normal(0, 0.15 * length, 2)
    t = np.linspace(0, 1, 64)[:, None]
    return (1 - t) ** 2 * start + 2 * (1 - t) * t * bend + t**2 * end


def scratch(surface: np.ndarray, rng: np.random.Generator) -> Defect:
    size = surface.shape[0]
    stroke = np.zeros(surface.shape, np.float32)
    points = np.rint(bezier(rng, size, rng.uniform(0.2, 0.45) * size)).astype(np.int32)
    cv2.polylines(stroke, [points], False, 1.0, int(rng.choice([1, 2])), cv2.LINE_AA)
    sign = rng.choice([-1.0, 1.0])
    amplitude = sign * rng.uniform(0.9, 1.6) * contrast(surface)
    return Defect(surface + amplitude * stroke, stroke > 0.25)


def crack(surface: np.ndarray, rng: np.random.Generator) -> Defect:
    size = surface.shape[0]
    stroke = np.zeros(surface.shape, np.float32)
    branches = [(place(rng, size), rng.uniform(0, 2 * np.pi), rng.uniform(0.15, 0.35) * size)]
    for _ in range(int(rng.integers(0, 3))):
        branches.append((place(rng, size, 0.3), rng.uniform(0, 2 * np.pi), rng.uniform(0.05, 0.12) * size))
    first_start = branches[0][0]
    for index, (start, heading, length) in enumerate(branches):
        point = first_start if index == 0 else start
        if index > 0:
            # A branch leaves from a point on the main crack drawn so far.
            drawn = np.argwhere(stroke > 0)
            point = drawn[rng.integers(len(drawn))][::-1].astype(np.float64)
        path = [point.copy()]
        for _ in range(int(length / 3)):
            heading += rng.normal(0, 0.45)
            point = np.clip(point + 3 * np.array([np.cos(heading), np.sin(heading)]), 1, size - 2)
            path.append(point.copy())
        cv2.polylines(stroke, [np.rint(path).astype(np.int32)], False, 1.0, 1, cv2.LINE_AA)
    darkening = rng.uniform(0.35, 0.6)
    return Defect(surface * (1 - darkening * stroke), stroke > 0.25)


def blob(rng: np.random.Generator, size: int, radius: float) -> np.ndarray:
    """A smooth irregular blob: an ellipse whose outline is perturbed by slow noise; float in [0, 1]."""
    centre = place(rng, size)
    y, x = np.mgrid[:size, :size].astype(np.float64)
    angle = rng.uniform(0, np.pi)
    u = (x - centre[0]) * np.cos(angle) + (y - centre[1]) * np.sin(angle)
    v = -(x - centre[0]) * np.sin(angle) + (y - centre[1]) * np.cos(angle)
    distance = np.hypot(u / rng.uniform(0.6, 1.0), v / rng.uniform(0.6, 1.0)) / radius
    wobble = 0.2 * unit_noise(rng, (size, size), (radius / 2, radius / 2))
    return np.clip(1.0 - (distance + wobble), 0.0, 1.0)


def stain(surface: np.ndarray, rng: np.random.Generator) -> Defect:
    size = surface.shape[0]
    inside = blob(rng, size, rng.uniform(0.06, 0.13) * size)
    # Soft edge: full strength from the blob's inner half outwards to nothing at its rim.
    alpha = np.clip(inside * 2.5, 0.0, 1.0)
    shift = rng.choice([-1.0, 1.0]) * rng.uniform(0.6, 1.1) * contrast(surface)
    return Defect(surface + shift * alpha, alpha > 0.25)


def hole(surface: np.ndarray, rng: np.random.Generator) -> Defect:
    size = surface.shape[0]
    inside = blob(rng, size, rng.uniform(0.03, 0.07) * size)
    pit = inside > 0
    # Missing material: a dark floor, lit a little from one side, and a slightly bright rim.
    depth = np.clip(inside * 4, 0.0, 1.0)
    floor = 0.35 * surface.mean() + 0.1 * contrast(surface) * unit_noise(rng, surface.shape, (2, 2))
    image = surface * (1 - depth) + floor * depth
    rim = ndimage.binary_dilation(pit, iterations=1) & ~pit
    image[rim] += 0.5 * contrast(surface)
    return Defect(image, pit | rim)


def particle(surface: np.ndarray, rng: np.random.Generator) -> Defect:
    size = surface.shape[0]
    stamp = np.zeros(surface.shape, np.float32)
    if rng.random() < 0.5:
        # A fibre: a short, thin, strongly curved strand.
        points = np.rint(bezier(rng, size, rng.uniform(0.08, 0.16) * size)).astype(np.int32)
        cv2.polylines(stamp, [points], False, 1.0, 1, cv2.LINE_AA)
    else:
        centre = place(rng, size)
        for _ in range(int(rng.integers(1, 5))):
            offset = centre + rng.normal(0, 0.04 * size, 2)
            axes = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
            point = (int(offset[0]), int(offset[1]))
            cv2.ellipse(stamp, point, axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1, cv2.LINE_AA)
    level = rng.choice([0.15, 1.8]) * surface.mean()
    alpha = np.clip(stamp * rng.uniform(0.6, 0.9), 0.0, 1.0)
    return Defect(surface * (1 - alpha) + level * alpha, stamp > 0.25)


DEFECTS: dict[str, Callable[[np.ndarray, np.random.Generator], Defect]] = {
    "scratch": scratch,
    "crack": crack,
    "stain": stain,
    "hole": hole,
    "particle": particle,
}


# --- the set -----------------------------------------------------------------------------------------


def image_rng(category: str, split: str, kind: str, index: int) -> np.random.Generator:
    """Each image its own stream, so any subset of the set can be rebuilt alone and comes out the same."""
    keys = (
        SEED,
        sorted(SURFACES).index(category),
        SPLIT_CODES[split],
        ("good", *DEFECT_TYPES).index(kind),
        index,
    )
    return np.random.default_rng(keys)


def write_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image):
        raise OSError(f"cannot write {path}; check that the folder is writable and the disk not full")


def write_category(root: Path, category: str, train: int, test_good: int, per_defect: int) -> dict[str, int]:
    """One category in the MVTec AD layout; returns its counts per folder."""
    surface = SURFACES[category]
    counts: dict[str, int] = {}
    for split, count in (("train", train), ("test", test_good)):
        for i in range(count):
            write_png(
                root / split / "good" / f"{i:03d}.png",
                to_uint8(surface(image_rng(category, split, "good", i), split)),
            )
        counts[f"{split}/good"] = count
    for kind, draw in DEFECTS.items():
        for i in range(per_defect):
            rng = image_rng(category, "test", kind, i)
            defect = draw(surface(rng, "test"), rng)
            write_png(root / "test" / kind / f"{i:03d}.png", to_uint8(defect.image))
            write_png(root / "ground_truth" / kind / f"{i:03d}_mask.png", defect.mask.astype(np.uint8) * 255)
        counts[f"test/{kind}"] = per_defect
    return counts


def build(
    out: Path, categories: tuple[str, ...], train: int, test_good: int, per_defect: int
) -> dict[str, object]:
    """Write the chosen categories under `out` and `out/manifest.json`; returns the manifest."""
    unknown = sorted(set(categories) - SURFACES.keys())
    if unknown:
        raise ValueError(f"unknown categories {unknown}; known: {sorted(SURFACES)}")
    manifest: dict[str, object] = {
        "seed": SEED,
        "layout": "MVTec AD: <category>/{train/good, test/good, test/<defect>, ground_truth/<defect>}",
        "defect_types": list(DEFECT_TYPES),
        "development_categories": [c for c in DEV_CATEGORIES if c in categories],
        "held_out_categories": [c for c in HELD_OUT_CATEGORIES if c in categories],
        "sources": {c: SOURCES[c] for c in categories},
        "counts": {c: write_category(out / c, c, train, test_good, per_defect) for c in categories},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="folder to write the set into")
    parser.add_argument("--train", type=int, default=200, help="good training images per category (200)")
    parser.add_argument("--test-good", type=int, default=40, help="good test images per category (40)")
    parser.add_argument("--per-defect", type=int, default=10, help="test images per defect type (10)")
    parser.add_argument(
        "--categories",
        default=",".join((*DEV_CATEGORIES, *HELD_OUT_CATEGORIES)),
        help="comma-separated categories (default: all)",
    )
    args = parser.parse_args(argv)
    try:
        manifest = build(
            args.out, tuple(args.categories.split(",")), args.train, args.test_good, args.per_defect
        )
    except (ValueError, OSError) as exc:
        print(f"make_texture_set: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(manifest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
