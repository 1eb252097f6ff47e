"""`benchmarks/inference_cost.py`: the same images through each package, timed, with the ratio."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from tests.helpers import run_benchmark
from tests.toy_models import make_toy_package


def test_times_every_package_on_the_same_images(tmp_path: Path) -> None:
    plain = make_toy_package(tmp_path / "plain")
    with_map = make_toy_package(tmp_path / "with-map", with_map=True)
    images = tmp_path / "images" / "good"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(5):
        cv2.imwrite(str(images / f"{i}.png"), rng.integers(0, 255, (40, 40), dtype=np.uint8))

    result = run_benchmark(
        "benchmarks.inference_cost",
        str(plain),
        str(with_map),
        "--images",
        str(tmp_path / "images"),
        "--batch",
        "2",
        "--repeats",
        "3",
        timeout=120,
    )

    assert (result["n_images"], result["batch"]) == (5, 2)
    first, second = result["packages"]
    assert (first["package"], second["package"]) == (str(plain), str(with_map))
    assert first["ratio_to_first"] == 1.0
    for package in (first, second):
        assert len(package["ms_per_image_passes"]) == 3 and package["ms_per_image_median"] > 0
    assert second["ratio_to_first"] > 0
