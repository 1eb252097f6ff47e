"""Per-image inference cost of model packages on the same images, through the inspector's own path.

    python -m benchmarks.inference_cost PACKAGE [PACKAGE ...] --images DIR [--batch 8] [--repeats 5]

Each package's ONNX model runs on the CPU (ONNX Runtime, as `serve --device cpu` does) over the same
preprocessed batches of the PNG/JPEG images in DIR (recursively); preprocessing and reading are not
timed. For every package: the median over `repeats` passes of the milliseconds per image, and the ratio
to the first package's. Prints one JSON object last.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge_inspect.inspector.infer import load_model
from edge_inspect.inspector.preprocess import preprocess_batch
from edge_inspect.models.package import load_package
from edge_inspect.training.datasets import read_image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def pass_ms_per_image(model: Any, batches: list[np.ndarray]) -> float:
    started = time.perf_counter()
    for batch in batches:
        model.run(batch)
    return 1000 * (time.perf_counter() - started) / sum(len(b) for b in batches)


def measure(package_dir: Path, images: list[np.ndarray], batch: int, repeats: int) -> dict[str, Any]:
    package = load_package(package_dir)
    recipe = package.card.preprocess
    batches = [preprocess_batch(images[i : i + batch], recipe) for i in range(0, len(images), batch)]
    model = load_model(package, device="cpu")
    pass_ms_per_image(model, batches[:1])  # warm-up: first-run allocations and kernel choice
    passes = [pass_ms_per_image(model, batches) for _ in range(repeats)]
    return {
        "package": str(package_dir),
        "family": package.card.family,
        "input_size": [recipe.height, recipe.width],
        "ms_per_image_median": round(statistics.median(passes), 3),
        "ms_per_image_passes": [round(p, 3) for p in passes],
        "median": statistics.median(passes),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("packages", nargs="+", type=Path, help="model package directories")
    parser.add_argument("--images", type=Path, required=True, help="folder of images (searched recursively)")
    parser.add_argument("--batch", type=int, default=8, help="images per inference call (8)")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes over all images (5)")
    args = parser.parse_args(argv)
    paths = sorted(p for p in args.images.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        print(f"inference_cost: no images under {args.images}", file=sys.stderr)
        return 2
    images = [read_image(p) for p in paths]
    results = [measure(package, images, args.batch, args.repeats) for package in args.packages]
    reference = results[0]["median"]
    for result in results:
        result["ratio_to_first"] = round(result.pop("median") / reference, 2)
        print(
            f"{result['family']} {result['package']}: {result['ms_per_image_median']} ms per image "
            f"({result['ratio_to_first']}x the first)",
            file=sys.stderr,
        )
    print(json.dumps({"n_images": len(images), "batch": args.batch, "packages": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
