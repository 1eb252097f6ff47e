"""PatchCore on small synthetic parts: a brick texture (scikit-image's bundled CC0 image) with a painted spot.

The model is fitted once per module on 16 clean 96x96 crops; validation crops come from another part of
the texture, so they are new to the model. Checks: detection and localisation in torch, the exported
graph against torch, the package through the inspector's own load / infer / postprocess path, the
trainer on a folder in the common layout, and the coreset's k-center guarantees.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from edge_inspect.cli.train import register_patchcore
from edge_inspect.inspector.infer import load_model
from edge_inspect.inspector.postprocess import postprocess
from edge_inspect.inspector.preprocess import preprocess_batch
from edge_inspect.inspector.rules import QualityRules
from edge_inspect.models.efficientnet_lite0 import CONFIG as LITE0
from edge_inspect.models.package import ModelCard, load_package
from edge_inspect.models.patchcore import (
    PatchCore,
    PatchCoreConfig,
    build_patchcore,
    coreset_size,
    greedy_coreset,
)
from edge_inspect.training.calibrate import calibrate
from edge_inspect.training.export import MAP_OUTPUT, export_map_package
from edge_inspect.training.train_patchcore import train_patchcore

SIZE = 96
# The painted defect: a saturated disc, centre (x, y) and radius in frame pixels.
SPOT_X, SPOT_Y, SPOT_R = 62, 33, 8


@dataclass(frozen=True)
class Parts:
    good: list[np.ndarray]
    val: list[np.ndarray]
    bad: list[np.ndarray]


def texture_crops(count: int, rows: tuple[int, int], rng: np.random.Generator) -> list[np.ndarray]:
    from skimage import data

    texture = data.brick()
    crops = []
    for _ in range(count):
        y = int(rng.integers(rows[0], rows[1] - SIZE))
        x = int(rng.integers(0, texture.shape[1] - SIZE))
        crops.append(np.ascontiguousarray(texture[y : y + SIZE, x : x + SIZE]))
    return crops


def paint_spot(frame: np.ndarray) -> np.ndarray:
    painted = frame.copy()
    cv2.circle(painted, (SPOT_X, SPOT_Y), SPOT_R, 255, thickness=-1)
    return painted


@pytest.fixture(scope="module")
def parts() -> Parts:
    rng = np.random.default_rng(0)
    good = texture_crops(16, (0, 320), rng)
    val = texture_crops(6, (320, 512), rng)
    return Parts(good, val, [paint_spot(frame) for frame in val])


@pytest.fixture(scope="module")
def model(parts: Parts) -> PatchCore:
    # Stride 8 and 16: at 96 px the default stride-16 grid has 6x6 cells, too coarse to check localisation.
    config = PatchCoreConfig(input_size=SIZE, levels=(3, 4), coreset_ratio=0.25)
    patchcore = build_patchcore(config=config)
    patchcore.fit_memory_bank([torch.from_numpy(preprocess_batch(parts.good, LITE0.recipe(SIZE)))])
    return patchcore


def run(model: PatchCore, frames: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    with torch.inference_mode():
        scores, maps = model(torch.from_numpy(preprocess_batch(frames, LITE0.recipe(SIZE))))
    return scores.numpy(), maps.numpy()


@pytest.fixture(scope="module")
def package_dir(model: PatchCore, parts: Parts, tmp_path_factory: pytest.TempPathFactory) -> Path:
    good_scores, _ = run(model, parts.val)
    bad_scores, _ = run(model, parts.bad)
    calibration = calibrate(good_scores, bad_scores, target_frr=0.05)
    recipe = LITE0.recipe(SIZE)
    card = ModelCard(
        name="brick-patchcore",
        version="1",
        family="patchcore",
        preprocess=recipe,
        thresholds=calibration.thresholds,
        map_output=MAP_OUTPUT,
        classes=("anomaly",),
        metrics={"calibration": calibration.metrics()},
    )
    directory = tmp_path_factory.mktemp("brick-patchcore")
    parity = preprocess_batch(parts.val[:2] + parts.bad[:1], recipe)
    return export_map_package(model, directory, card, parity).path


def test_painted_spot_scores_higher_and_the_map_peaks_on_it(model: PatchCore, parts: Parts) -> None:
    good_scores, good_maps = run(model, parts.val)
    bad_scores, bad_maps = run(model, parts.bad)
    assert good_maps.shape == (len(parts.val), SIZE, SIZE)
    assert bad_scores.min() > good_scores.max()
    # Score and map share one unit: the image score is the map's maximum.
    np.testing.assert_allclose(bad_scores, bad_maps.reshape(len(parts.bad), -1).max(axis=1), rtol=1e-6)
    for anomaly_map in bad_maps:
        y, x = np.unravel_index(int(anomaly_map.argmax()), anomaly_map.shape)
        assert np.hypot(x - SPOT_X, y - SPOT_Y) <= SPOT_R, f"map peak at {(x, y)}, spot at {(SPOT_X, SPOT_Y)}"


@pytest.mark.parametrize("batch", [1, 3])
def test_onnx_runtime_matches_torch(model: PatchCore, parts: Parts, package_dir: Path, batch: int) -> None:
    import onnxruntime as ort

    frames = (parts.bad[:1] + parts.val)[:batch]
    session = ort.InferenceSession(str(package_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    images = preprocess_batch(frames, LITE0.recipe(SIZE))
    onnx_scores, onnx_maps = session.run(["score", MAP_OUTPUT], {"image": images})
    torch_scores, torch_maps = run(model, frames)
    assert onnx_scores.shape == (batch,) and onnx_maps.shape == (batch, SIZE, SIZE)
    np.testing.assert_allclose(onnx_scores, torch_scores, rtol=1e-4)
    np.testing.assert_allclose(onnx_maps, torch_maps, rtol=0, atol=1e-3)


def test_package_through_the_inspector_finds_the_spot(package_dir: Path, parts: Parts) -> None:
    package = load_package(package_dir)
    card = package.card
    assert (card.family, card.map_output, card.score_output) == ("patchcore", MAP_OUTPUT, "score")
    onnx_model = load_model(package, device="cpu")
    frames = [parts.bad[0], parts.val[0]]
    outputs = onnx_model.run(preprocess_batch(frames, card.preprocess))
    bad, good = postprocess(outputs, card, QualityRules(), [f.shape[:2] for f in frames])
    assert bad.verdict == "NG" and bad.score > 0.5
    assert good.verdict != "NG"
    covering = [
        d
        for d in bad.defects
        if d.bbox[0] <= SPOT_X - SPOT_R
        and d.bbox[1] <= SPOT_Y - SPOT_R
        and d.bbox[0] + d.bbox[2] >= SPOT_X + SPOT_R
        and d.bbox[1] + d.bbox[3] >= SPOT_Y + SPOT_R
    ]
    assert covering, f"no region covers the spot; regions: {[d.bbox for d in bad.defects]}"
    assert covering[0].cls == "anomaly"


def test_mirror_views_are_averaged_and_export_like_the_plain_model(parts: Parts, tmp_path: Path) -> None:
    # With 3x3 neighbourhood averaging, so that both descriptor paths are covered (the fixture's has none).
    config = PatchCoreConfig(input_size=SIZE, levels=(3, 4), coreset_ratio=0.25, neighbourhood=3, flips=True)
    patchcore = build_patchcore(config=config)
    patchcore.fit_memory_bank([torch.from_numpy(preprocess_batch(parts.good, LITE0.recipe(SIZE)))])
    # The bank is chosen from every good image in its four mirror views, at the size the images alone give.
    assert patchcore.bank.shape[0] == coreset_size(len(parts.good) * 12 * 12, 0.25, 16384)
    good_scores, _ = run(patchcore, parts.val)
    bad_scores, bad_maps = run(patchcore, parts.bad)
    assert bad_scores.min() > good_scores.max()
    np.testing.assert_allclose(bad_scores, bad_maps.reshape(len(parts.bad), -1).max(axis=1), rtol=1e-6)
    # Maps are flipped back before averaging: the peak stays on the spot, not on its mirror images.
    for anomaly_map in bad_maps:
        y, x = np.unravel_index(int(anomaly_map.argmax()), anomaly_map.shape)
        assert np.hypot(x - SPOT_X, y - SPOT_Y) <= SPOT_R
    # A part and its mirror image get the same score.
    mirrored, _ = run(patchcore, [np.ascontiguousarray(f[:, ::-1]) for f in parts.bad])
    np.testing.assert_allclose(mirrored, bad_scores, rtol=1e-4)
    card = ModelCard(
        name="brick-patchcore-flips",
        version="1",
        family="patchcore",
        preprocess=LITE0.recipe(SIZE),
        thresholds=calibrate(good_scores, bad_scores, target_frr=0.05).thresholds,
        map_output=MAP_OUTPUT,
        classes=("anomaly",),
    )
    parity = preprocess_batch(parts.val[:2] + parts.bad[:1], LITE0.recipe(SIZE))
    package = export_map_package(patchcore, tmp_path / "flips", card, parity)
    assert load_package(package.path).card.name == "brick-patchcore-flips"


def write_brick_folder(root: Path, rng: np.random.Generator, test_good: int, test_spot: int) -> Path:
    """A data folder in the common layout: 20 clean crops to train on, clean and spotted crops to test."""
    layout = {
        "train/good": texture_crops(20, (0, 320), rng),
        "test/good": texture_crops(test_good, (320, 512), rng),
        "test/spot": [paint_spot(f) for f in texture_crops(test_spot, (320, 512), rng)],
    }
    for folder, frames in layout.items():
        (root / folder).mkdir(parents=True)
        for i, frame in enumerate(frames):
            cv2.imwrite(str(root / folder / f"{i:03d}.png"), frame)
    return root


def test_trainer_on_a_folder_in_the_common_layout(tmp_path: Path) -> None:
    root = write_brick_folder(tmp_path / "brick", np.random.default_rng(1), test_good=2, test_spot=2)
    (root / "ground_truth/spot").mkdir(parents=True)
    cv2.imwrite(str(root / "ground_truth/spot/000_mask.png"), np.zeros((SIZE, SIZE), np.uint8))

    out = train_patchcore(
        str(root), tmp_path / "package", input_size=SIZE, levels=(4, 5), coreset_ratio=0.25, progress=False
    )

    card = load_package(out).card
    training = card.training
    # 15 % of train/good is held out for the threshold; test/ is not read.
    assert (training["n_train"], training["n_val"], training["n_val_defective"]) == (17, 3, 0)
    # Levels 4 and 5: stride 16 and 32, so 6x6 patches per 96 px image.
    assert training["bank_size"] == coreset_size(17 * 6 * 6, 0.25, 16384)
    calibration = card.metrics["calibration"]
    assert calibration["n_good"] == 3 and calibration["false_rejects"] == 0
    assert calibration["miss_rate"] is None
    assert card.preprocess == LITE0.recipe(SIZE)
    assert card.thresholds.score_low < card.thresholds.threshold < card.thresholds.score_high
    assert json.loads((out / "model.json").read_text())["family"] == "patchcore"
    # Neighbourhood was left open: both candidates were tried on the 3 good val crops and 3 synthetic
    # defects drawn on them, and the card says which won and why.
    selection = training["selection"]
    assert (selection["n_val_good"], selection["n_synthetic"]) == (3, 3)
    assert [c["neighbourhood"] for c in selection["candidates"]] == [1, 3]
    assert training["patchcore"]["neighbourhood"] in (1, 3)
    assert selection["chosen"].startswith(
        f"{SIZE} px, stride 16+32, {training['patchcore']['neighbourhood']}x"
    )


def test_eval_reports_pixel_auroc_from_ground_truth_masks(tmp_path: Path) -> None:
    from edge_inspect.training.evaluate import evaluate_scored

    root = write_brick_folder(tmp_path / "brick", np.random.default_rng(2), test_good=3, test_spot=3)
    (root / "ground_truth/spot").mkdir(parents=True)
    spot_mask = cv2.circle(np.zeros((SIZE, SIZE), np.uint8), (SPOT_X, SPOT_Y), SPOT_R, 255, thickness=-1)
    # The third defective image has no mask: it counts for the image metrics only.
    for i in range(2):
        cv2.imwrite(str(root / f"ground_truth/spot/{i:03d}_mask.png"), spot_mask)
    package = train_patchcore(
        str(root), tmp_path / "package", input_size=SIZE, levels=(3, 4), coreset_ratio=0.25, progress=False
    )

    result = evaluate_scored(
        package, data=str(root), split="test", device="cpu", progress=False, target_frrs=(0.2,)
    ).result

    assert (result["n"], result["n_defective"], result["auroc"]) == (6, 3, 1.0)
    assert result["pixel_auroc_images"] == 5
    assert result["pixel_auroc"] > 0.9
    # Misses at the calibrated threshold and at one set on the 3 good val crops, per defect type.
    calibrated = result["at_threshold"]
    assert calibrated["target_frr"] == load_package(package).card.metrics["calibration"]["target_frr"]
    misses = result["confusion"]["fn"]
    assert (calibrated["miss"]["events"], calibrated["miss"]["n"]) == (misses, 3)
    assert calibrated["miss_by_defect_type"]["spot"] == calibrated["miss"]
    assert calibrated["false_reject"]["n"] == 3
    (at_frr,) = result["at_target_frr"]
    assert at_frr["target_frr"] == 0.2 and at_frr["source"] == "3 good images of the val split"
    assert at_frr["miss"]["n"] == 3 and 0.0 <= at_frr["miss"]["low"] <= at_frr["miss"]["high"] <= 1.0


def test_train_subcommand_parses_its_options() -> None:
    parser = argparse.ArgumentParser()
    register_patchcore(parser.add_subparsers(dest="family"))
    args = parser.parse_args(
        ["patchcore", "--out", "var/x", "--coreset-ratio", "0.05", "--target-frr", "0.01", "--limit", "200"]
    )
    # Input size, levels and neighbourhood left open: chosen on good and synthetic-defect images.
    assert (args.data, args.out, args.input_size, args.seed, args.select) == ("elpv", "var/x", None, 0, True)
    assert (args.levels, args.neighbourhood) == (None, None)
    assert not parser.parse_args(["patchcore", "--out", "x", "--no-select"]).select
    assert (args.coreset_ratio, args.target_frr, args.limit, args.no_progress) == (0.05, 0.01, 200, False)
    assert callable(args.handler)


def test_unfitted_model_and_bad_configs_fail_clearly() -> None:
    with pytest.raises(RuntimeError, match="memory bank is empty"):
        build_patchcore(pretrained=False, config=PatchCoreConfig(input_size=64))(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="too small"):
        PatchCoreConfig(input_size=24)
    with pytest.raises(ValueError, match="feature levels"):
        PatchCoreConfig(levels=(3, 9))
    with pytest.raises(ValueError, match="odd patch count"):
        PatchCoreConfig(neighbourhood=2)


# --- coreset ----------------------------------------------------------------------------------------


def pairwise(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.cdist(a.double(), b.double())


def test_coreset_is_deterministic_for_a_seed() -> None:
    points = torch.randn(2000, 32, generator=torch.Generator().manual_seed(0))
    first = greedy_coreset(points, 100, 16, seed=3)
    assert torch.equal(first, greedy_coreset(points, 100, 16, seed=3))
    assert len(set(first.tolist())) == 100
    assert not torch.equal(first, greedy_coreset(points, 100, 16, seed=4))


@pytest.mark.parametrize("projection_dim", [8, 3])
def test_coreset_takes_one_point_from_every_cluster(projection_dim: int) -> None:
    generator = torch.Generator().manual_seed(1)
    centres = torch.randn(6, 8, generator=generator) * 100
    labels = torch.arange(6).repeat_interleave(40)
    points = centres[labels] + torch.randn(240, 8, generator=generator)
    chosen = greedy_coreset(points, 6, projection_dim, seed=0)
    assert sorted(labels[chosen].tolist()) == list(range(6))


def test_coreset_has_the_k_center_property() -> None:
    points = torch.rand(600, 12, generator=torch.Generator().manual_seed(2))
    chosen = greedy_coreset(points, 40, 12, seed=0)
    # Covering radius: how far the worst-served point is from its nearest chosen point.
    radius = pairwise(points, points[chosen]).min(dim=1).values.max()
    # Each chosen point was the farthest one when picked, so no two chosen points are closer than the
    # final radius; with the radius it certifies the 2-approximation of the optimal k-center cover.
    between = pairwise(points[chosen], points[chosen]) + torch.eye(40, dtype=torch.float64) * 1e9
    assert between.min() >= radius * (1 - 1e-4)
    random_subset = torch.randperm(600, generator=torch.Generator().manual_seed(0))[:40]
    assert radius < pairwise(points, points[random_subset]).min(dim=1).values.max()


def test_coreset_size_follows_ratio_and_cap() -> None:
    assert coreset_size(1000, 0.1, 16384) == 100
    assert coreset_size(1_000_000, 0.1, 16384) == 16384
    assert coreset_size(3, 0.1, 16384) == 1


def test_summary_shows_the_candidates_and_warns_when_none_sees_synthetic_defects() -> None:
    from edge_inspect.cli.train import selection_lines

    trial = {
        "setting": "224 px, stride 16+32, 1x1 neighbourhood",
        "synthetic_miss_rate": 0.9,
        "ms_per_image": 20,
    }
    weak = {
        "chosen": "224 px, stride 16+32, 1x1 neighbourhood: ...",
        "n_val_good": 30,
        "n_synthetic": 30,
        "candidates": [{**trial, "synthetic_auroc": 0.55}],
    }
    lines = selection_lines(weak)
    assert lines[0].startswith("chosen: 224 px") and "0.550" in lines[3]
    assert lines[-1].startswith(
        "warning: even the best setting tells synthetic defects from good parts poorly"
    )
    strong = {**weak, "candidates": [{**trial, "synthetic_auroc": 0.95}]}
    assert not any(line.startswith("warning") for line in selection_lines(strong))
    assert selection_lines(None) == []
