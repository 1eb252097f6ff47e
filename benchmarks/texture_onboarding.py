"""New-product onboarding on the texture set: `train patchcore` or `train segmenter` on good images only,
`eval` per category.

    python -m benchmarks.make_texture_set --out var/texture-set
    python -m benchmarks.texture_onboarding --set var/texture-set [--family patchcore|segmenter]
        [--categories held-out|dev|all|a,b] [--no-select] [--levels 4,5 --neighbourhood 1 --input-size 224]
        [--threads 1] [--at-frr 0.02]

For each category: a model from its 200 good training images (the trainer holds 15 % of them out to
set the threshold, and PatchCore to choose its settings against synthetic defects), then the test split
through the inspector's path: image AUROC, pixel AUROC, AUROC per defect type, and the share of
defective parts let through at the calibrated threshold with its exact interval. The held-out categories
are the default: they were never used to decide anything about the recipe. Prints one JSON object last:
per category, and the mean and minimum image AUROC.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.make_texture_set import DEV_CATEGORIES, HELD_OUT_CATEGORIES
from edge_inspect.models.package import load_package
from edge_inspect.training.evaluate import evaluate_scored
from edge_inspect.training.metrics import auroc
from edge_inspect.training.train_patchcore import train_patchcore
from edge_inspect.training.train_segmenter import train_segmenter

GROUPS = {
    "held-out": HELD_OUT_CATEGORIES,
    "dev": DEV_CATEGORIES,
    "all": (*DEV_CATEGORIES, *HELD_OUT_CATEGORIES),
}


def per_type_auroc(labels: np.ndarray, scores: np.ndarray, types: list[str]) -> dict[str, float | None]:
    """Each defect type against all good test images."""
    kinds = sorted({t for t in types if t})
    kind_of = np.asarray(types)
    return {
        kind: auroc(
            np.r_[np.zeros((~labels).sum(), bool), np.ones((kind_of == kind).sum(), bool)],
            np.r_[scores[~labels], scores[kind_of == kind]],
        )
        for kind in kinds
    }


def train(root: Path, out: Path, args: argparse.Namespace) -> Path:
    if args.family == "segmenter":
        from edge_inspect.models.segmenter import SegmenterConfig

        defaults = SegmenterConfig()
        config = SegmenterConfig(
            input_size=args.input_size or defaults.input_size, levels=args.levels or defaults.levels
        )
        return train_segmenter(str(root), out, config, threads=args.threads, progress=False)
    return train_patchcore(
        str(root),
        out,
        input_size=args.input_size,
        levels=args.levels,
        neighbourhood=args.neighbourhood,
        select=args.select,
        threads=args.threads,
        progress=False,
    )


def onboard(root: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    package = train(root, out, args)
    wall = time.perf_counter() - started
    card = load_package(package).card
    training = card.training
    selection = training.get("selection", {})
    evaluation = evaluate_scored(
        package, data=str(root), split="test", device="cpu", progress=False, target_frrs=args.at_frr
    )
    result = evaluation.result
    types = [s.defect_type for s in evaluation.samples]
    return {
        "image_auroc": result["auroc"],
        "pixel_auroc": result["pixel_auroc"],
        "auroc_by_defect_type": per_type_auroc(evaluation.labels, evaluation.scores, types),
        "at_threshold": result["at_threshold"],
        "at_target_frr": result["at_target_frr"],
        "family": card.family,
        "chosen": selection.get("chosen", f"{card.family}: {training.get(card.family)}"),
        "candidates": selection.get("candidates", []),
        "synthetic_check": card.metrics.get("synthetic_check"),
        "train_seconds": training["train_seconds"],
        "wall_seconds_with_export": round(wall, 1),
        "eval_images_per_second": result["images_per_second"],
    }


def parse_levels(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(","))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--set", type=Path, default=Path("var/texture-set"), help="the texture set's folder")
    parser.add_argument("--out", type=Path, default=Path("var/texture-onboarding"), help="model packages")
    parser.add_argument("--family", choices=("patchcore", "segmenter"), default="patchcore")
    parser.add_argument("--categories", default="held-out", help="held-out (default), dev, all, or a,b,...")
    parser.add_argument("--select", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--input-size", type=int, default=None)
    parser.add_argument("--levels", type=parse_levels, default=None)
    parser.add_argument("--neighbourhood", type=int, default=None)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    parser.add_argument(
        "--at-frr", type=lambda t: tuple(float(x) for x in t.split(",")), default=(), help="e.g. 0.02"
    )
    args = parser.parse_args(argv)
    categories = GROUPS.get(args.categories) or tuple(args.categories.split(","))
    missing = [c for c in categories if not (args.set / c / "train" / "good").is_dir()]
    if missing:
        print(
            f"texture_onboarding: {args.set} lacks {missing}; build it first: "
            f"python -m benchmarks.make_texture_set --out {args.set}",
            file=sys.stderr,
        )
        return 2
    results: dict[str, Any] = {}
    for category in categories:
        results[category] = onboard(args.set / category, args.out / category, args)
        r = results[category]
        missed = r["at_threshold"]["miss"]["rate"]
        print(
            f"{category}: image AUROC {r['image_auroc']:.4f}, pixel {r['pixel_auroc']:.4f}, missed "
            f"{missed:.0%} at the threshold, {r['train_seconds']:.0f} s; {r['chosen']}",
            file=sys.stderr,
        )
    aurocs = [results[c]["image_auroc"] for c in categories]
    print(
        json.dumps(
            {
                "categories": results,
                "mean_image_auroc": float(np.mean(aurocs)),
                "min_image_auroc": float(np.min(aurocs)),
                "family": args.family,
                "select": args.select,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
