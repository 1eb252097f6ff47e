"""`edge-inspect eval MODEL_DIR`: a model package's metrics on one data split, through ONNX Runtime."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from edge_inspect.models.package import ModelPackageError


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "eval",
        help="metrics of a model package on a data split",
        description="Evaluate a model package (hash-verified) through ONNX Runtime on one data split.",
    )
    add_arguments(parser)
    parser.set_defaults(handler=handle_eval)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model_dir", metavar="MODEL_DIR", help="model package directory (model.onnx + model.json)"
    )
    parser.add_argument(
        "--data", default="elpv", help="'elpv' or a folder with train/ and test/ (default elpv)"
    )
    parser.add_argument("--split", default="test", choices=("train", "val", "test"), help="default test")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default auto")
    parser.add_argument("--limit", type=int, default=None, help="evaluate at most N images (quick checks)")
    parser.add_argument("--json", action="store_true", help="also print the metrics as one JSON line, last")
    parser.add_argument(
        "--scores", default=None, help="write every image's path, label, score and verdict to this CSV"
    )
    parser.add_argument(
        "--report",
        default=None,
        help="write metrics.json, ROC, precision-recall, score histogram and worst-case grid PNGs here",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def handle_eval(args: argparse.Namespace) -> int:
    from edge_inspect.training.evaluate import evaluate_package

    try:
        result = evaluate_package(
            Path(args.model_dir),
            data=args.data,
            split=args.split,
            device=args.device,
            limit=args.limit,
            progress=not args.no_progress,
            scores_csv=Path(args.scores) if args.scores else None,
            report_dir=Path(args.report) if args.report else None,
        )
    except (ModelPackageError, ValueError, RuntimeError) as exc:
        print(f"edge-inspect eval: {exc}", file=sys.stderr)
        return 2
    print(format_report(result))
    if args.json:
        print(json.dumps(result, sort_keys=True))
    return 0


def format_report(result: dict[str, Any]) -> str:
    confusion = result["confusion"]
    auroc = "n/a (one class only)" if result["auroc"] is None else f"{result['auroc']:.4f}"
    decided = result["accuracy_decided"]
    return "\n".join(
        [
            f"model      {result['model']} {result['model_version']} ({result['family']}) on "
            f"{result['provider']}",
            f"split      {result['split']} of {result['data']}: n={result['n']}, "
            f"{result['n_defective']} defective",
            f"accuracy   {result['accuracy']:.4f}",
            f"precision  {result['precision']:.4f}",
            f"recall     {result['recall']:.4f}",
            f"f1         {result['f1']:.4f}",
            f"auroc      {auroc}",
            *(
                [f"pix auroc  {result['pixel_auroc']:.4f} over {result['pixel_auroc_images']} images"]
                if result.get("pixel_auroc") is not None
                else []
            ),
            f"threshold  {result['threshold']:.4f} (review band ±{result['review_band']} normalised)",
            f"review     {result['review_rate']:.1%} of parts; accuracy on the rest "
            + ("n/a" if decided is None else f"{decided:.4f}"),
            "confusion  predicted OK / NG",
            f"  good     {confusion['tn']:>6} {confusion['fp']:>6}",
            f"  defect   {confusion['fn']:>6} {confusion['tp']:>6}",
            f"speed      {result['images_per_second']} images/s (preprocess + inference)",
        ]
    )
