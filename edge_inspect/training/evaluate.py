"""`edge-inspect eval MODEL_DIR`: a packaged model's metrics on one split, through the inspector's path.

The package is loaded and hash-verified exactly as the inspector loads it, images go through the shared
`preprocess` with the card's recipe and through ONNX Runtime, and verdicts come from `rules`, so the
figures describe what the line will see, not what torch saw during training.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge_inspect.inspector.preprocess import PreprocessRecipe, crop, preprocess_batch
from edge_inspect.inspector.rules import QualityRules, judge, normalise_scores
from edge_inspect.models.package import ModelPackageError, Thresholds, load_package

EVAL_BATCH = 32


def compute_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    """Binary metrics of the defective class; a part is predicted defective when score >= threshold.

    AUROC is None when the labels hold only one class (it is undefined there).
    """
    from sklearn.metrics import roc_auc_score

    truth = np.asarray(labels, dtype=bool)
    predicted = np.asarray(scores, dtype=np.float64) >= threshold
    tp = int(np.sum(truth & predicted))
    tn = int(np.sum(~truth & ~predicted))
    fp = int(np.sum(~truth & predicted))
    fn = int(np.sum(truth & ~predicted))
    n = truth.size
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    both_classes = 0 < int(truth.sum()) < n
    return {
        "n": n,
        "n_defective": int(truth.sum()),
        "threshold": float(threshold),
        "accuracy": (tp + tn) / n if n else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "auroc": float(roc_auc_score(truth, scores)) if both_classes else None,
        "confusion": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
    }


def best_threshold(labels: np.ndarray, scores: np.ndarray, low: float = 0.02, high: float = 0.98) -> float:
    """The accuracy-maximising threshold within [low, high]; ties go to the one nearest 0.5.

    Candidates are midpoints between neighbouring distinct scores, so the choice sits in a gap rather
    than on a validation image's exact score. Use it on validation data only.
    """
    truth = np.asarray(labels, dtype=bool)
    distinct = np.unique(np.asarray(scores, dtype=np.float64))
    candidates = np.clip(np.append((distinct[:-1] + distinct[1:]) / 2, 0.5), low, high)
    accuracy = np.array([np.mean((scores >= t) == truth) for t in candidates])
    best = np.flatnonzero(accuracy == accuracy.max())
    return float(candidates[best[np.argmin(np.abs(candidates[best] - 0.5))]])


def verdicts(scores: np.ndarray, thresholds: Thresholds) -> list[str]:
    """OK / NG / REVIEW per raw score, through the inspector's rules with default quality rules."""
    normalised = normalise_scores(scores, thresholds)
    return [judge(float(s), [], thresholds, QualityRules()) for s in normalised]


def review_metrics(labels: np.ndarray, scores: np.ndarray, thresholds: Thresholds) -> dict[str, Any]:
    """How many parts go to REVIEW, and the accuracy on the parts decided automatically."""
    decided = np.array([v != "REVIEW" for v in verdicts(scores, thresholds)])
    truth = np.asarray(labels, dtype=bool)[decided]
    predicted = np.asarray(scores)[decided] >= thresholds.threshold
    return {
        "review_rate": float(1.0 - decided.mean()) if decided.size else 0.0,
        "accuracy_decided": float(np.mean(truth == predicted)) if truth.size else None,
    }


def mask_path(sample: Any, root: Path) -> Path | None:
    """The ground-truth mask of a defective test image in the common layout, if the data set has one:
    `test/<type>/<name>.<ext>` ↔ `ground_truth/<type>/<name>_mask.png`."""
    if not sample.defect_type:
        return None
    path = root / "ground_truth" / sample.defect_type / f"{sample.path.stem}_mask.png"
    return path if path.is_file() else None


def model_input_mask(path: Path | None, frame_hw: tuple[int, int], recipe: PreprocessRecipe) -> np.ndarray:
    """A defect mask on the model input's pixel grid (all False without a mask): cropped to the recipe's ROI
    and resampled by nearest neighbour, so each map pixel is compared with the mask pixel it looks at."""
    import cv2

    if path is None:
        return np.zeros((recipe.height, recipe.width), dtype=bool)
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None or mask.shape != frame_hw:
        raise ValueError(
            f"mask {path} is unreadable or not {frame_hw[1]}x{frame_hw[0]} like its image; "
            "masks must be single-channel PNGs of the image's size"
        )
    region = crop(mask, recipe.roi)
    resized = cv2.resize(region, (recipe.width, recipe.height), interpolation=cv2.INTER_NEAREST)
    return resized > 0


def pixel_auroc(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> float | None:
    """AUROC of anomaly-map pixels against mask pixels over a whole split (the MVTec AD convention);
    None when no pixel is defective or none is good."""
    from sklearn.metrics import roc_auc_score

    if not maps:
        return None
    truth = np.concatenate([m.reshape(-1) for m in masks])
    if truth.all() or not truth.any():
        return None
    return float(roc_auc_score(truth, np.concatenate([m.reshape(-1) for m in maps])))


def evaluate_package(
    model_dir: Path,
    data: str = "elpv",
    split: str = "test",
    device: str = "auto",
    limit: int | None = None,
    progress: bool = True,
    scores_csv: Path | None = None,
    report_dir: Path | None = None,
) -> dict[str, Any]:
    """Metrics of a package on one split; optionally every image's score as CSV and the picture report."""
    from tqdm import tqdm

    from edge_inspect.inspector.infer import load_model
    from edge_inspect.training.train_classifier import dataset_splits, limit_samples, load_images

    package = load_package(model_dir)
    card = package.card
    seed = int(card.training.get("split_seed", 0))
    splits, root = dataset_splits(data, seed)
    if split not in splits:
        raise ValueError(f"split {split!r} does not exist for data {data!r}; choose from {sorted(splits)}")
    samples = limit_samples(splits[split], limit, seed)
    images = load_images(samples, progress=progress, desc=f"read {split}")
    model = load_model(package, device=device)
    # Pixel-level figures where the model gives a map and the data set has masks: every image of the
    # split counts, good ones with an empty mask; defective images without a mask file are left out.
    masks = [mask_path(s, root) for s in samples]
    with_masks = card.map_output is not None and any(m is not None for m in masks)
    pixel_maps: list[np.ndarray] = []
    pixel_masks: list[np.ndarray] = []
    started = time.perf_counter()
    scores: list[np.ndarray] = []
    for start in tqdm(range(0, len(images), EVAL_BATCH), desc="evaluate", unit="batch", disable=not progress):
        batch = preprocess_batch(images[start : start + EVAL_BATCH], card.preprocess)
        outputs = model.run(batch)
        scores.append(outputs[card.score_output].reshape(-1))
        if with_masks:
            for offset, anomaly_map in enumerate(outputs[card.map_output]):  # type: ignore[index]
                i = start + offset
                if masks[i] is not None or not samples[i].defective:
                    pixel_maps.append(np.asarray(anomaly_map, dtype=np.float32))
                    pixel_masks.append(model_input_mask(masks[i], images[i].shape[:2], card.preprocess))
    seconds = time.perf_counter() - started
    all_scores = np.concatenate(scores) if scores else np.zeros(0, dtype=np.float32)
    labels = np.array([s.defective for s in samples], dtype=bool)
    result = {
        "model": card.name,
        "model_version": card.version,
        "model_dir": str(package.path),
        "family": card.family,
        "data": data,
        "split": split,
        "provider": model.provider,
        **compute_metrics(labels, all_scores, card.thresholds.threshold),
        "review_band": card.thresholds.review_band,
        **review_metrics(labels, all_scores, card.thresholds),
        "pixel_auroc": pixel_auroc(pixel_maps, pixel_masks),
        "pixel_auroc_images": len(pixel_maps),
        "seconds": round(seconds, 3),
        "images_per_second": round(len(images) / seconds, 1) if seconds > 0 else None,
    }
    if scores_csv is not None or report_dir is not None:
        _write_outputs(samples, root, labels, all_scores, card.thresholds, result, scores_csv, report_dir)
    return result


def _write_outputs(
    samples: Sequence[Any],
    root: Path,
    labels: np.ndarray,
    scores: np.ndarray,
    thresholds: Thresholds,
    result: dict[str, Any],
    scores_csv: Path | None,
    report_dir: Path | None,
) -> None:
    from edge_inspect.training.report import ScoredImage, write_report, write_scores_csv

    normalised = normalise_scores(scores, thresholds)
    scored = [
        ScoredImage(
            path=sample.path,
            relative_path=str(
                sample.path.relative_to(root) if sample.path.is_relative_to(root) else sample.path
            ),
            defective=bool(label),
            raw_score=float(raw),
            score=float(score),
            verdict=verdict,
        )
        for sample, label, raw, score, verdict in zip(
            samples, labels, scores, normalised, verdicts(scores, thresholds), strict=True
        )
    ]
    if scores_csv is not None:
        write_scores_csv(scores_csv, scored)
    if report_dir is not None:
        write_report(report_dir, scored, thresholds.review_band, result)


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


def handle_eval(args: argparse.Namespace) -> int:
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


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "eval",
        help="metrics of a model package on a data split",
        description="Evaluate a model package (hash-verified) through ONNX Runtime on one data split.",
    )
    add_arguments(parser)
    parser.set_defaults(handler=handle_eval)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m edge_inspect.training.evaluate MODEL_DIR ...`: eval without the other subcommands."""
    from edge_inspect.logs import setup_logging

    parser = argparse.ArgumentParser(prog="python -m edge_inspect.training.evaluate")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    add_arguments(parser)
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    return handle_eval(args)


if __name__ == "__main__":
    sys.exit(main())
