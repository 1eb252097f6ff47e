"""What every good-only family's training shares: which images it may learn from, the held-out images
that set its threshold, and the calibrated metrics and data record its card carries.

Data discipline: the model learns from the good images of the train split only (ELPV: defect
probability 0; a folder: train/good). The validation split sets the threshold: its good images for the
false-reject target, its defects, when there are any, for the miss rate and F1 in the report. For a
folder in the common layout validation is a held-out share of train/, so it holds good images only. The
test split is never read here.

Only stdlib and numpy at module level (the command line imports the trainers' defaults).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_inspect.models.package import Thresholds
from edge_inspect.training.calibrate import calibrate
from edge_inspect.training.datasets import (
    Sample,
    TrainingDataError,
    dataset_splits,
    fingerprint,
    limit_samples,
    load_images,
)
from edge_inspect.training.metrics import compute_metrics, review_metrics

# Validation images run through torch and ONNX Runtime to check the export.
PARITY_IMAGES = 3


def certainly_good(samples: Sequence[Sample]) -> list[Sample]:
    """Images certain to be good: an ELPV cell rated 1/3 defective may show a real crack, and whatever a
    good-only model learns from is normal by definition."""
    return [s for s in samples if s.probability == 0.0]


@dataclass(frozen=True)
class GoodOnlyData:
    data: str
    seed: int
    limit: int | None
    root: Path
    train_samples: list[Sample]
    val_samples: list[Sample]
    train_images: list[np.ndarray]
    val_images: list[np.ndarray]

    @property
    def val_labels(self) -> np.ndarray:
        return np.array([s.defective for s in self.val_samples], dtype=bool)

    @property
    def val_good(self) -> list[np.ndarray]:
        return [image for image, bad in zip(self.val_images, self.val_labels, strict=True) if not bad]

    def record(self) -> dict[str, Any]:
        """What the card says of the data: enough to tell whether a later run saw the same images."""
        return {
            "data": self.data,
            "split_seed": self.seed,
            "data_fingerprint": fingerprint(self.train_samples, self.root),
            "val_fingerprint": fingerprint(self.val_samples, self.root),
            "n_train": len(self.train_samples),
            "n_val": len(self.val_samples),
            "n_val_defective": int(self.val_labels.sum()),
            "limit": self.limit,
            "label_rule": "defective = defect probability >= 0.5",
        }


def load_good_only_data(data: str, seed: int, limit: int | None, progress: bool, family: str) -> GoodOnlyData:
    """The certainly-good train images (at most `limit`) and the whole val split, read; refuses data a
    good-only model cannot learn from or calibrate on, saying what to add."""
    splits, root = dataset_splits(data, seed)
    train_samples = limit_samples(certainly_good(splits["train"]), limit, seed)
    val_samples = splits["val"]
    if not train_samples:
        raise TrainingDataError(
            f"the train split of {data} has no good images (defect probability 0, or train/good/); "
            f"{family} learns what good parts look like from them"
        )
    if all(s.defective for s in val_samples):
        raise TrainingDataError(
            f"the val split of {data} has {len(val_samples)} images and none is good; the threshold needs "
            "good validation images (put more images in train/good/)"
        )
    return GoodOnlyData(
        data=data,
        seed=seed,
        limit=limit,
        root=root,
        train_samples=train_samples,
        val_samples=val_samples,
        train_images=load_images(train_samples, progress, "read train good"),
        val_images=load_images(val_samples, progress, "read val"),
    )


def calibrated_metrics(
    labels: np.ndarray, scores: np.ndarray, target_frr: float, seed: int
) -> tuple[Thresholds, dict[str, Any]]:
    """Thresholds for `target_frr` on the good validation scores, and the validation metrics at them."""
    calibration = calibrate(scores[~labels], scores[labels], target_frr=target_frr, seed=seed)
    thresholds = calibration.thresholds
    return thresholds, {
        "split": "val",
        **compute_metrics(labels, scores, thresholds.threshold),
        **review_metrics(labels, scores, thresholds),
        "calibration": calibration.metrics(),
    }
