"""benchmarks/make_texture_set.py: the onboarding set is reproducible, in the common layout, and every
defect lies where its mask says."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy import ndimage

from benchmarks.make_texture_set import (
    DEFECTS,
    DEV_CATEGORIES,
    HELD_OUT_CATEGORIES,
    SURFACES,
    build,
    image_rng,
    main,
)
from edge_inspect.training.datasets import folder_splits
from edge_inspect.training.evaluate import mask_path

# One photograph and one procedural surface keep the test to a second or two.
CATEGORIES = ("gravel", "wood")


def digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_the_set_is_rebuilt_byte_for_byte_and_reads_as_the_common_layout(tmp_path: Path) -> None:
    first = build(tmp_path / "a", CATEGORIES, train=4, test_good=2, per_defect=2)
    assert (
        main(
            [
                "--out",
                str(tmp_path / "b"),
                "--train",
                "4",
                "--test-good",
                "2",
                "--per-defect",
                "2",
                "--categories",
                ",".join(CATEGORIES),
            ]
        )
        == 0
    )
    assert digests(tmp_path / "a") == digests(tmp_path / "b")
    assert first["held_out_categories"] == list(CATEGORIES)
    splits = folder_splits(tmp_path / "a" / "gravel", seed=0)
    assert not any(s.defective for s in splits["train"] + splits["val"])
    defective = [s for s in splits["test"] if s.defective]
    assert {s.defect_type for s in defective} == set(DEFECTS) and len(defective) == 2 * len(DEFECTS)
    for sample in defective:
        mask = cv2.imread(str(mask_path(sample, tmp_path / "a" / "gravel")), cv2.IMREAD_GRAYSCALE)
        assert mask.shape == cv2.imread(str(sample.path), cv2.IMREAD_GRAYSCALE).shape
        assert set(np.unique(mask)) == {0, 255}


def test_development_and_held_out_categories_split_every_surface() -> None:
    assert not set(DEV_CATEGORIES) & set(HELD_OUT_CATEGORIES)
    assert set(DEV_CATEGORIES) | set(HELD_OUT_CATEGORIES) == set(SURFACES)
    assert len(HELD_OUT_CATEGORIES) >= 5


@pytest.mark.parametrize("category", sorted(SURFACES))
@pytest.mark.parametrize("kind", sorted(DEFECTS))
def test_a_defect_is_small_and_changes_the_surface_only_where_its_mask_is(category: str, kind: str) -> None:
    rng = image_rng(category, "test", kind, 0)
    surface = SURFACES[category](rng, "test")
    defect = DEFECTS[kind](surface.copy(), rng)
    changed = np.abs(defect.image - surface) > 3.0
    near_mask = ndimage.binary_dilation(defect.mask, iterations=2)
    assert defect.mask.any() and changed.any()
    assert not (changed & ~near_mask).any()
    # Small: a few percent of the surface at most, as on a real part.
    assert defect.mask.mean() < 0.06
