"""The good-only defect segmenter: targets and training pool, the model, `train segmenter` end to end
through the exporter, the inspector's postprocessing and `eval`."""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from edge_inspect.cli.train import register_segmenter, segmenter_summary
from edge_inspect.inspector.infer import load_model
from edge_inspect.inspector.postprocess import postprocess
from edge_inspect.inspector.preprocess import preprocess_batch
from edge_inspect.inspector.rules import QualityRules
from edge_inspect.models.efficientnet_lite0 import CONFIG as LITE0
from edge_inspect.models.package import load_package
from edge_inspect.models.segmenter import SegmenterConfig, build_segmenter
from edge_inspect.training.export import MAP_OUTPUT
from edge_inspect.training.synthetic_anomalies import ANOMALY_KINDS
from edge_inspect.training.train_segmenter import (
    SEGMENTER_INPUT_SIZE,
    SEGMENTER_LEVELS,
    defect_targets,
    train_segmenter,
    training_pool,
)
from tests.test_patchcore import SIZE, SPOT_R, SPOT_X, SPOT_Y, write_brick_folder


def test_defect_targets_mark_the_patches_a_defect_covers() -> None:
    mask = np.zeros((64, 64), bool)
    mask[8:16, 40:48] = True  # exactly one 8 px cell of an 8x8 grid
    mask[40, 0:64] = True  # a 1 px line: an eighth of every cell in its row
    targets = defect_targets([mask, np.zeros((64, 64), bool)], (8, 8))
    assert targets.shape == (2, 8, 8) and targets.dtype == np.float32
    expected = np.zeros((8, 8), np.float32)
    expected[1, 5] = 1.0
    expected[5, :] = 1.0
    np.testing.assert_array_equal(targets[0], expected)
    assert not targets[1].any()


def test_training_pool_holds_every_good_image_and_its_synthetic_copies() -> None:
    rng = np.random.default_rng(0)
    images = [rng.integers(60, 200, (48, 48), dtype=np.uint8) for _ in range(4)]
    pool, masks, kinds = training_pool(images, variants=3, seed=7)
    assert len(pool) == len(masks) == len(kinds) == 16
    assert kinds[0::4] == ["good"] * 4 and all(np.array_equal(pool[4 * i], images[i]) for i in range(4))
    defect_kinds = [kind for kind in kinds if kind != "good"]
    # The kinds are taken in turn, so every kind is trained on even with few images.
    assert defect_kinds == [ANOMALY_KINDS[i % len(ANOMALY_KINDS)] for i in range(12)]
    assert all(not m.any() for m, k in zip(masks, kinds, strict=True) if k == "good")
    assert all(m.any() for m, k in zip(masks, kinds, strict=True) if k != "good")
    again, _, _ = training_pool(images, variants=3, seed=7)
    assert all(np.array_equal(a, b) for a, b in zip(pool, again, strict=True))


def test_score_is_the_map_peak_and_the_seed_alone_sets_the_head() -> None:
    config = SegmenterConfig(input_size=64, levels=(3, 4), seed=3)
    torch.manual_seed(1)
    first = build_segmenter(pretrained=False, config=config)
    torch.manual_seed(2)
    second = build_segmenter(pretrained=False, config=config)
    for a, b in zip(first.head.parameters(), second.head.parameters(), strict=True):
        assert torch.equal(a, b)
    with torch.inference_mode():
        scores, maps = first.eval()(torch.randn(2, 3, 64, 64))
    assert scores.shape == (2,) and maps.shape == (2, 64, 64)
    torch.testing.assert_close(scores, maps.flatten(1).amax(dim=1))


def test_bad_settings_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="feature levels"):
        SegmenterConfig(levels=(3, 9))
    with pytest.raises(ValueError, match="too small"):
        SegmenterConfig(input_size=24)
    with pytest.raises(ValueError, match="epochs"):
        train_segmenter(str(tmp_path), tmp_path / "out", epochs=0)


def test_command_line_defaults_are_the_models() -> None:
    parser = argparse.ArgumentParser()
    register_segmenter(parser.add_subparsers(dest="family"))
    args = parser.parse_args(["segmenter", "--out", "var/x", "--levels", "4,5", "--epochs", "3"])
    assert (args.data, args.levels, args.epochs, args.input_size) == ("elpv", (4, 5), 3, SEGMENTER_INPUT_SIZE)
    assert callable(args.handler)
    defaults = SegmenterConfig()
    assert (defaults.input_size, defaults.levels) == (SEGMENTER_INPUT_SIZE, SEGMENTER_LEVELS)


def test_trained_on_good_crops_alone_it_finds_a_painted_spot(tmp_path: Path) -> None:
    from edge_inspect.training.evaluate import evaluate_scored

    root = write_brick_folder(tmp_path / "brick", np.random.default_rng(3), test_good=4, test_spot=4)
    (root / "ground_truth/spot").mkdir(parents=True)
    spot_mask = cv2.circle(np.zeros((SIZE, SIZE), np.uint8), (SPOT_X, SPOT_Y), SPOT_R, 255, thickness=-1)
    for i in range(4):
        cv2.imwrite(str(root / f"ground_truth/spot/{i:03d}_mask.png"), spot_mask)

    config = SegmenterConfig(input_size=SIZE, levels=(3, 4), seed=0)
    package_dir = train_segmenter(
        str(root), tmp_path / "package", config, epochs=30, variants=5, progress=False
    )

    package = load_package(package_dir)
    card = package.card
    assert (card.family, card.map_output, card.preprocess) == ("segmenter", MAP_OUTPUT, LITE0.recipe(SIZE))
    training = card.training
    # 15 % of train/good is held out for the threshold and the synthetic check; test/ is not read.
    assert (training["n_train"], training["n_val"], training["n_pool"]) == (17, 3, 17 * 6)
    assert len(training["epoch_losses"]) == 30 and training["epoch_losses"][-1] < training["epoch_losses"][0]
    check = card.metrics["synthetic_check"]
    assert (check["n_val_good"], check["n_synthetic"]) == (3, 3)
    assert "synthetic check on 3 held-out good images" in segmenter_summary(package, 1.0)

    # Through the inspector's own path: the spot scores above every good crop and a region covers it.
    spotted, good = (
        [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sorted((root / "test" / kind).glob("*.png"))]
        for kind in ("spot", "good")
    )
    onnx_model = load_model(package, device="cpu")
    outputs = onnx_model.run(preprocess_batch(spotted + good, card.preprocess))
    judged = postprocess(outputs, card, QualityRules(), [f.shape[:2] for f in spotted + good])
    # Raw scores: the normalised ones are clipped to [0, 1] at the ends of the calibrated scale. Twenty
    # crops train a weak head, so the test asks for a clear ranking, not a perfect one.
    raw = outputs["score"]
    assert raw[: len(spotted)].mean() > raw[len(spotted) :].mean() + 0.5, raw
    assert sum(j.verdict == "NG" for j in judged[: len(spotted)]) >= 3, judged
    peak = np.unravel_index(np.argmax(outputs[MAP_OUTPUT][0]), outputs[MAP_OUTPUT][0].shape)
    assert abs(peak[0] - SPOT_Y) <= 2 * SPOT_R and abs(peak[1] - SPOT_X) <= 2 * SPOT_R, peak

    result = evaluate_scored(package_dir, data=str(root), split="test", device="cpu", progress=False).result
    assert (result["n"], result["n_defective"]) == (8, 4) and result["auroc"] >= 0.75
    assert result["pixel_auroc"] > 0.9


def test_good_only_training_refuses_data_without_good_images(tmp_path: Path) -> None:
    from edge_inspect.training.datasets import TrainingDataError
    from edge_inspect.training.good_only import load_good_only_data

    crop = np.full((32, 32), 128, np.uint8)
    for folder in ("train/scratch", "test/good"):
        (tmp_path / "only-defects" / folder).mkdir(parents=True)
    for i in range(8):
        cv2.imwrite(str(tmp_path / "only-defects/train/scratch" / f"{i}.png"), crop)
    with pytest.raises(TrainingDataError, match=r"no good images .* the segmenter learns what good parts"):
        load_good_only_data(str(tmp_path / "only-defects"), 0, None, False, "the segmenter")
    with pytest.raises(TrainingDataError, match="neither 'elpv' nor a folder"):
        load_good_only_data(str(tmp_path / "missing"), 0, None, False, "PatchCore")
