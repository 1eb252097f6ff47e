"""`benchmarks/elpv_fusion.py` on a folder data set where both toy models separate the classes: the fusion
is fitted on validation, thresholds come from validation, and every figure is reported for the test split."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from tests.helpers import run_benchmark
from tests.toy_models import make_toy_package


def write_images(folder: Path, count: int, low: int, high: int, rng: np.random.Generator) -> None:
    folder.mkdir(parents=True)
    for i in range(count):
        cv2.imwrite(str(folder / f"{i}.png"), rng.integers(low, high, (40, 40), dtype=np.uint8))


def test_fusion_is_fitted_on_validation_and_reported_on_test(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    for split, count in (("train", 40), ("test", 20)):
        write_images(data / split / "good", count, 0, 120, rng)
        write_images(data / split / "bright", count, 110, 255, rng)
    classifier = make_toy_package(tmp_path / "mean")
    good_only = make_toy_package(tmp_path / "max", with_map=True)

    result = run_benchmark(
        "benchmarks.elpv_fusion",
        *("--classifier", str(classifier), "--good-only", str(good_only), "--data", str(data)),
        timeout=120,
    )

    assert result["test_images"] == 40 and 0 < result["val_images"] < 80
    assert len(result["fusion_weights"]) == 2
    for name in ("classifier", "good_only", "fused"):
        figures = result[name]
        assert figures["auroc"] > 0.9 and figures["accuracy"] > 0.8, (name, figures)
        promised = figures["at_0.02_frr"]
        assert promised["false_reject"]["n"] == 20 and promised["miss"]["n"] == 20
