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
    parser.add_argument(
        "--at-frr",
        type=parse_rates,
        default=(),
        metavar="RATES",
        help="also report the share of defective parts let through when the threshold is set, on the "
        "validation split's good parts, to reject these shares of good parts, e.g. 0.005,0.02 "
        "(default: only the model's own calibrated threshold)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def parse_rates(text: str) -> tuple[float, ...]:
    try:
        rates = tuple(float(part) for part in text.split(","))
    except ValueError:
        rates = ()
    if not rates or not all(0.0 < rate < 0.5 for rate in rates):
        raise argparse.ArgumentTypeError(
            f"{text!r}: give false-reject rates as fractions in (0, 0.5), comma-separated, e.g. 0.005,0.02"
        )
    return rates


def handle_eval(args: argparse.Namespace) -> int:
    from edge_inspect.training.evaluate import evaluate_scored

    try:
        result = evaluate_scored(
            Path(args.model_dir),
            data=args.data,
            split=args.split,
            device=args.device,
            limit=args.limit,
            progress=not args.no_progress,
            scores_csv=Path(args.scores) if args.scores else None,
            report_dir=Path(args.report) if args.report else None,
            target_frrs=args.at_frr,
        ).result
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
            *operating_point_lines(result),
            "confusion  predicted OK / NG",
            f"  good     {confusion['tn']:>6} {confusion['fp']:>6}",
            f"  defect   {confusion['fn']:>6} {confusion['tp']:>6}",
            f"speed      {result['images_per_second']} images/s (preprocess + inference)",
        ]
    )


def rate_text(estimate: dict[str, Any] | None, what: str) -> str:
    if estimate is None:
        return f"no {what} in this split"
    return (
        f"{estimate['rate']:.1%} ({estimate['events']} of {estimate['n']} {what}; 95 % interval "
        f"{estimate['low']:.1%} to {estimate['high']:.1%})"
    )


def point_lines(title: str, point: dict[str, Any]) -> list[str]:
    lines = [
        title,
        f"  good parts rejected       {rate_text(point['false_reject'], 'good')}",
        f"  defective parts let pass  {rate_text(point['miss'], 'defective')}",
    ]
    for kind, estimate in point["miss_by_defect_type"].items():
        lines.append(f"    {kind:<23} {rate_text(estimate, kind)}")
    return lines


def operating_point_lines(result: dict[str, Any]) -> list[str]:
    """Misses at the promised false-reject rate(s), with exact (Clopper-Pearson) intervals."""
    calibrated = result["at_threshold"]
    target = calibrated.get("target_frr")
    promise = f"calibrated for {target:.1%} false rejects on val" if target is not None else "the model's own"
    lines = point_lines(f"at the model's threshold ({promise}):", calibrated)
    for point in result["at_target_frr"]:
        lines += point_lines(
            f"at a threshold for {point['target_frr']:.1%} false rejects on {point['source']} "
            f"({point['threshold']:.4g}):",
            point,
        )
    return lines
