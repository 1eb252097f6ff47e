"""A packaged model's metrics on one split, through the inspector's path (`edge-inspect eval MODEL_DIR`).

The package is loaded and hash-verified exactly as the inspector loads it, images go through the shared
`preprocess` with the card's recipe and through ONNX Runtime, and verdicts come from `rules`, so the
figures describe what the line will see, not what torch saw during training.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_inspect.inspector.preprocess import PreprocessRecipe, crop, preprocess_batch
from edge_inspect.inspector.rules import normalise_scores
from edge_inspect.models.package import ModelCard, Thresholds, load_package
from edge_inspect.training.datasets import Sample, dataset_splits, limit_samples, load_images
from edge_inspect.training.metrics import (
    compute_metrics,
    operating_point,
    pixel_auroc,
    review_metrics,
    threshold_for_frr,
    verdicts,
)

if TYPE_CHECKING:
    from edge_inspect.inspector.infer import OnnxModel

EVAL_BATCH = 32


def mask_path(sample: Sample, root: Path) -> Path | None:
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


@dataclass(frozen=True)
class SplitScores:
    """Raw image scores, and the anomaly maps paired with their masks for the pixel-level AUROC."""

    scores: np.ndarray
    pixel_maps: list[np.ndarray]
    pixel_masks: list[np.ndarray]


def score_split(
    model: OnnxModel,
    card: ModelCard,
    samples: Sequence[Sample],
    images: Sequence[np.ndarray],
    root: Path,
    progress: bool,
) -> SplitScores:
    """Every image through the card's preprocessing and the served model, in batches."""
    from tqdm import tqdm

    # Pixel-level figures where the model gives a map and the data set has masks: every image of the
    # split counts, good ones with an empty mask; defective images without a mask file are left out.
    masks = [mask_path(s, root) for s in samples]
    with_masks = card.map_output is not None and any(m is not None for m in masks)
    pixel_maps: list[np.ndarray] = []
    pixel_masks: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    for start in tqdm(range(0, len(images), EVAL_BATCH), desc="evaluate", unit="batch", disable=not progress):
        batch = preprocess_batch(list(images[start : start + EVAL_BATCH]), card.preprocess)
        outputs = model.run(batch)
        scores.append(outputs[card.score_output].reshape(-1))
        if with_masks:
            for offset, anomaly_map in enumerate(outputs[card.map_output]):  # type: ignore[index]
                i = start + offset
                if masks[i] is not None or not samples[i].defective:
                    pixel_maps.append(np.asarray(anomaly_map, dtype=np.float32))
                    pixel_masks.append(model_input_mask(masks[i], images[i].shape[:2], card.preprocess))
    all_scores = np.concatenate(scores) if scores else np.zeros(0, dtype=np.float32)
    return SplitScores(all_scores, pixel_maps, pixel_masks)


@dataclass(frozen=True)
class Evaluation:
    """What `edge-inspect eval` prints (`result`) and the per-image scores behind it."""

    result: dict[str, Any]
    samples: list[Sample]
    labels: np.ndarray
    scores: np.ndarray


def evaluate_scored(
    model_dir: Path,
    data: str = "elpv",
    split: str = "test",
    device: str = "auto",
    limit: int | None = None,
    progress: bool = True,
    scores_csv: Path | None = None,
    report_dir: Path | None = None,
    target_frrs: Sequence[float] = (),
) -> Evaluation:
    """Metrics of a package on one split (`.result`) and every image's score; optionally the scores as CSV
    and the picture report. `target_frrs`: also report the misses at thresholds set for these false-reject
    rates on the validation split's good images (never on the evaluated split's)."""
    from edge_inspect.inspector.infer import load_model

    package = load_package(model_dir)
    card = package.card
    seed = int(card.training.get("split_seed", 0))
    splits, root = dataset_splits(data, seed)
    if split not in splits:
        raise ValueError(f"split {split!r} does not exist for data {data!r}; choose from {sorted(splits)}")
    samples = limit_samples(splits[split], limit, seed)
    images = load_images(samples, progress=progress, desc=f"read {split}")
    model = load_model(package, device=device)
    started = time.perf_counter()
    scored = score_split(model, card, samples, images, root, progress)
    seconds = time.perf_counter() - started
    all_scores = scored.scores
    labels = np.array([s.defective for s in samples], dtype=bool)
    types = [s.defect_type if s.defective else "" for s in samples]
    calibration = card.metrics.get("calibration", {})
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
        "at_threshold": {
            "target_frr": calibration.get("target_frr"),
            **operating_point(labels, all_scores, card.thresholds.threshold, types),
        },
        "at_target_frr": [
            {"target_frr": target, **operating_point(labels, all_scores, threshold, types), "source": source}
            for target, threshold, source in val_thresholds(
                model, card, splits, root, split, target_frrs, progress
            )
        ],
        "pixel_auroc": pixel_auroc(scored.pixel_maps, scored.pixel_masks),
        "pixel_auroc_images": len(scored.pixel_maps),
        "seconds": round(seconds, 3),
        "images_per_second": round(len(images) / seconds, 1) if seconds > 0 else None,
    }
    if scores_csv is not None or report_dir is not None:
        _write_outputs(samples, root, labels, all_scores, card.thresholds, result, scores_csv, report_dir)
    return Evaluation(result, samples, labels, all_scores)


def val_thresholds(
    model: OnnxModel,
    card: ModelCard,
    splits: dict[str, list[Sample]],
    root: Path,
    split: str,
    target_frrs: Sequence[float],
    progress: bool,
) -> list[tuple[float, float, str]]:
    """(target, threshold, where it came from) for each target false-reject rate, from the model's
    scores of the validation split's good images: the threshold a line would have set before seeing the
    evaluated parts."""
    if not target_frrs:
        return []
    good = [s for s in splits["val"] if not s.defective]
    if not good:
        raise ValueError("the val split has no good images: thresholds for --at-frr need them")
    images = load_images(good, progress=progress, desc="read val good")
    scores = score_split(model, card, good, images, root, progress).scores
    source = f"{len(good)} good images of the val split"
    if split == "val":
        source += " (the evaluated split itself: an optimistic figure)"
    return [(target, threshold_for_frr(scores, target), source) for target in target_frrs]


def _write_outputs(
    samples: Sequence[Sample],
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
