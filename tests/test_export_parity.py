"""Export: torch vs ONNX Runtime parity with a dynamic batch axis, the card, and tamper refusal."""

from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from edge_inspect.inspector.infer import load_model
from edge_inspect.inspector.preprocess import preprocess_batch
from edge_inspect.models.classifier import DefectClassifier, build_classifier
from edge_inspect.models.efficientnet_lite0 import CONFIG
from edge_inspect.models.package import ModelPackage, ModelPackageError, load_package
from edge_inspect.training.export import (
    INPUT_NAME,
    SCORE_NAME,
    ExportError,
    check_onnx,
    classifier_card,
    export_package,
    probability_thresholds,
)
from edge_inspect.training.metrics import verdicts

skimage_data = pytest.importorskip("skimage.data")

SIZE = 64
RECIPE = CONFIG.recipe(SIZE)


def fixed_frames() -> list[np.ndarray]:
    """Real photographs in the formats a camera sends: mono uint8 and 3-channel BGR of different sizes."""
    return [
        skimage_data.camera(),
        np.ascontiguousarray(skimage_data.chelsea()[:, :, ::-1]),
        np.ascontiguousarray(skimage_data.coffee()[:, :, ::-1]),
        skimage_data.moon(),
        np.ascontiguousarray(skimage_data.astronaut()[:, :, ::-1]),
    ]


@pytest.fixture(scope="module")
def classifier() -> DefectClassifier:
    torch.manual_seed(0)
    model = build_classifier(pretrained=True).eval()
    # A head that spreads these images over the whole score range, so that verdicts differ.
    with torch.no_grad():
        features = model.embed(torch.from_numpy(preprocess_batch(fixed_frames(), RECIPE)))
        centred = features - features.mean(dim=0)
        direction = centred[0] - centred[1]
        model.head.weight.copy_(4 * direction[None] / direction.norm() / centred.std())
        model.head.bias.copy_(-(model.head.weight @ features.mean(dim=0)))
    return model


@pytest.fixture(scope="module")
def package(classifier: DefectClassifier, tmp_path_factory: pytest.TempPathFactory) -> ModelPackage:
    card = classifier_card(
        name="parity-test",
        version="1",
        recipe=RECIPE,
        thresholds=probability_thresholds(0.5, 0.05),
        metrics={"split": "val", "accuracy": 1.0},
        training={"recipe": "test"},
    )
    directory = tmp_path_factory.mktemp("package")
    return export_package(classifier, directory, card, preprocess_batch(fixed_frames()[:2], RECIPE))


@pytest.mark.parametrize("indices", [[0], [1, 2, 4]], ids=["batch1", "batch3"])
def test_onnx_runtime_matches_torch(
    classifier: DefectClassifier, package: ModelPackage, indices: list[int]
) -> None:
    frames = [fixed_frames()[i] for i in indices]
    batch = preprocess_batch(frames, RECIPE)
    with torch.no_grad():
        expected = classifier(torch.from_numpy(batch)).numpy()
    session = load_model(load_package(package.path), device="cpu")
    scores = session.run(batch)[SCORE_NAME]
    assert scores.shape == (len(frames),)
    np.testing.assert_allclose(scores, expected, atol=1e-4, rtol=0)
    thresholds = package.card.thresholds
    assert verdicts(scores, thresholds) == verdicts(expected, thresholds)


def test_scores_are_spread_so_verdicts_mean_something(classifier: DefectClassifier) -> None:
    with torch.no_grad():
        scores = classifier(torch.from_numpy(preprocess_batch(fixed_frames(), RECIPE))).numpy()
    assert scores.min() < 0.45 and scores.max() > 0.55


def test_graph_has_the_inspector_contract(package: ModelPackage) -> None:
    model = onnx.load(str(package.onnx_path))
    assert [i.name for i in model.graph.input] == [INPUT_NAME]
    assert [o.name for o in model.graph.output] == [SCORE_NAME]
    batch_axis = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_axis.dim_param and not batch_axis.dim_value
    check_onnx(package.onnx_path, (3, SIZE, SIZE))
    with pytest.raises(ExportError, match="expected \\[batch, 3, 32, 32\\]"):
        check_onnx(package.onnx_path, (3, 32, 32))


def test_card_describes_the_model(package: ModelPackage) -> None:
    card = load_package(package.path).card
    assert card.family == "classifier"
    assert card.preprocess == RECIPE
    assert (card.thresholds.score_low, card.thresholds.threshold, card.thresholds.score_high) == (
        0.0,
        0.5,
        1.0,
    )
    assert card.thresholds.review_band == 0.05
    assert card.score_output == SCORE_NAME and card.map_output is None
    assert card.classes == ("defect",)
    assert datetime.fromisoformat(card.created_at).tzinfo is not None
    assert len(card.onnx_sha256) == 64
    assert not list(package.path.glob("*.partial"))


def test_tampered_model_is_refused(package: ModelPackage, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(package.path, copy)
    assert load_package(copy).card.onnx_sha256 == package.card.onnx_sha256
    data = bytearray((copy / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelPackageError, match="sha256"):
        load_package(copy)


def test_dihedral_average_is_the_mean_over_the_eight_views() -> None:
    import torch

    from edge_inspect.models.classifier import DihedralAverage

    def brightness_of_top_left(images: torch.Tensor) -> torch.Tensor:
        return images[:, 0, 0, 0]

    images = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    averaged = DihedralAverage(brightness_of_top_left)(images)
    # The top-left pixel of the 8 views visits each of the 4 corners twice.
    corners = images[:, 0, [0, 0, 3, 3], [0, 3, 0, 3]]
    torch.testing.assert_close(averaged, corners.mean(dim=1))
