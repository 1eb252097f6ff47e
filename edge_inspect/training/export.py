"""From a trained torch module to a verified model package (model.onnx + model.json).

The graph takes `image` (N, C, H, W) float32 with a dynamic batch axis and returns `score` (N,), and for
the good-only families also `anomaly_map` (N, H, W). Every export is checked three ways before the
package is written: the ONNX checker, the input/output contract the inspector relies on, and ONNX
Runtime against torch on real inputs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_inspect.inspector.preprocess import PreprocessRecipe
from edge_inspect.logs import log_event
from edge_inspect.models.package import ModelCard, ModelPackage, Thresholds, write_package

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)

INPUT_NAME = "image"
SCORE_NAME = "score"
# Good-only families also return where the part looks unusual: (N, H, W) at input resolution, in the
# score's own unit, so the inspector's pixel threshold is the image threshold.
MAP_OUTPUT = "anomaly_map"
# Relative to the largest torch score: map models sum many terms whose float order differs by runtime.
MAP_SCORE_PARITY = 1e-4
MAP_PARITY = 1e-3
# The example batch has 2 images: an example of 1 lets the exporter specialise the batch axis to 1.
EXAMPLE_BATCH = 2
PARITY_TOLERANCE = 1e-4


class ExportError(RuntimeError):
    """An exported graph that must not be packaged."""


def export_onnx(
    model: nn.Module,
    path: Path,
    input_shape: tuple[int, int, int],
    output_names: tuple[str, ...] = (SCORE_NAME,),
) -> None:
    """Write `model` (eval mode, contiguous weights) to `path` as a single self-contained ONNX file."""
    import torch

    model = model.eval().to(memory_format=torch.contiguous_format)
    example = torch.zeros((EXAMPLE_BATCH, *input_shape), dtype=torch.float32)
    batch = torch.export.Dim("batch", min=1, max=4096)
    # The dynamo exporter (torch.export) is the supported path in torch 2.14; it has handled every
    # module here, so the legacy TorchScript exporter is deliberately not kept as a fallback.
    program = torch.onnx.export(
        model,
        (example,),
        input_names=[INPUT_NAME],
        output_names=list(output_names),
        dynamic_shapes=({0: batch},),
        dynamo=True,
        external_data=False,
        verbose=False,
    )
    if program is None:
        raise ExportError("torch.onnx.export returned no program; cannot save the ONNX graph")
    program.save(str(path))


def check_onnx(path: Path, input_shape: tuple[int, int, int]) -> None:
    """The ONNX checker plus the contract the inspector relies on: names, shapes, a symbolic batch axis."""
    import onnx

    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    inputs = {i.name: i for i in model.graph.input}
    outputs = {o.name: o for o in model.graph.output}
    if list(inputs) != [INPUT_NAME] or SCORE_NAME not in outputs:
        raise ExportError(
            f"{path}: graph inputs {list(inputs)} / outputs {list(outputs)}; expected input "
            f"{INPUT_NAME!r} and output {SCORE_NAME!r}"
        )
    dims = inputs[INPUT_NAME].type.tensor_type.shape.dim
    if not dims[0].dim_param or tuple(d.dim_value for d in dims[1:]) != input_shape:
        raise ExportError(
            f"{path}: input {INPUT_NAME!r} has shape {[d.dim_param or d.dim_value for d in dims]}; "
            f"expected [batch, {', '.join(map(str, input_shape))}] with a symbolic batch axis"
        )
    score_dims = outputs[SCORE_NAME].type.tensor_type.shape.dim
    if len(score_dims) != 1 or score_dims[0].dim_param != dims[0].dim_param:
        raise ExportError(f"{path}: output {SCORE_NAME!r} must have shape (batch,)")


def parity_error(model: nn.Module, path: Path, images: np.ndarray) -> float:
    """Largest |torch - ONNX Runtime| score difference on `images` (N, C, H, W) float32, on the CPU."""
    import onnxruntime as ort
    import torch

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    onnx_scores = session.run([SCORE_NAME], {INPUT_NAME: images})[0]
    with torch.no_grad():
        torch_scores = model.eval()(torch.from_numpy(images)).numpy()
    return float(np.max(np.abs(onnx_scores - torch_scores)))


def probability_thresholds(threshold: float, review_band: float) -> Thresholds:
    """Thresholds for a model whose score is a probability: raw 0 and 1 are the ends of the scale."""
    return Thresholds(threshold=threshold, score_low=0.0, score_high=1.0, review_band=review_band)


def classifier_card(
    name: str,
    version: str,
    recipe: PreprocessRecipe,
    thresholds: Thresholds,
    metrics: dict[str, Any],
    training: dict[str, Any],
) -> ModelCard:
    return ModelCard(
        name=name,
        version=version,
        family="classifier",
        preprocess=recipe,
        thresholds=thresholds,
        score_output=SCORE_NAME,
        map_output=None,
        classes=("defect",),
        metrics=metrics,
        training=training,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def map_model_card(
    data: str,
    family: str,
    recipe: PreprocessRecipe,
    thresholds: Thresholds,
    metrics: dict[str, Any],
    training: dict[str, Any],
) -> ModelCard:
    """The card of a good-only model (score and anomaly map, one class 'anomaly') trained on `data`."""
    now = datetime.now(timezone.utc)
    data_name = "elpv" if data == "elpv" else Path(data).name
    return ModelCard(
        name=f"{data_name}-{family}",
        version=now.strftime("%Y%m%d.%H%M%S"),
        family=family,
        preprocess=recipe,
        thresholds=thresholds,
        map_output=MAP_OUTPUT,
        classes=("anomaly",),
        metrics=metrics,
        training=training,
        created_at=now.isoformat(timespec="seconds"),
    )


def export_checked(
    model: nn.Module,
    directory: Path,
    card: ModelCard,
    verify: Callable[[Path, tuple[int, int, int]], dict[str, float]],
    output_names: tuple[str, ...] = (SCORE_NAME,),
) -> ModelPackage:
    """Export `model` to a staging file, check the input/output contract, run `verify(path, input_shape)`
    (which raises ExportError when the graph must not ship, else returns its figures for the log) and only
    then write the package."""
    recipe = card.preprocess
    input_shape = (recipe.channels, recipe.height, recipe.width)
    directory.mkdir(parents=True, exist_ok=True)
    staging = directory / "model.onnx.partial"
    try:
        export_onnx(model, staging, input_shape, output_names)
        check_onnx(staging, input_shape)
        figures = verify(staging, input_shape)
        package = write_package(directory, staging, card)
    finally:
        staging.unlink(missing_ok=True)
    log_event(log, logging.INFO, "model_exported", path=str(directory), name=card.name, **figures)
    return package


def export_package(
    model: nn.Module, directory: Path, card: ModelCard, parity_images: np.ndarray
) -> ModelPackage:
    """Export, check and package `model`; `parity_images` are real preprocessed inputs (N, C, H, W)."""

    def same_scores_as_torch(path: Path, _: tuple[int, int, int]) -> dict[str, float]:
        error = parity_error(model, path, np.ascontiguousarray(parity_images, dtype=np.float32))
        if error > PARITY_TOLERANCE:
            raise ExportError(
                f"ONNX Runtime and torch disagree by {error:.2e} (> {PARITY_TOLERANCE:.0e}) on the same "
                "inputs; the exported graph is not the trained model; do not ship it"
            )
        return {"parity_error": error}

    return export_checked(model, directory, card, same_scores_as_torch)


def check_map_output(path: Path, input_shape: tuple[int, int, int]) -> None:
    """The anomaly map must be (batch, H, W) at input resolution: postprocess maps it to frame pixels."""
    import onnx

    graph = onnx.load(str(path)).graph
    outputs = {o.name: o for o in graph.output}
    if MAP_OUTPUT not in outputs:
        raise ExportError(f"{path}: no output {MAP_OUTPUT!r} (outputs: {list(outputs)}); re-export the model")
    batch = graph.input[0].type.tensor_type.shape.dim[0].dim_param
    dims = outputs[MAP_OUTPUT].type.tensor_type.shape.dim
    shape = [d.dim_param or d.dim_value for d in dims]
    if shape != [batch, *input_shape[1:]]:
        raise ExportError(
            f"{path}: output {MAP_OUTPUT!r} has shape {shape}; expected [{batch}, {input_shape[1]}, "
            f"{input_shape[2]}] (the input resolution, same batch axis)"
        )


def map_parity_errors(model: nn.Module, path: Path, images: np.ndarray) -> tuple[float, float]:
    """Largest torch vs ONNX Runtime differences (score, map), each relative to the torch scores' peak.

    `images` is run as one batch and its first image alone, so a graph that fixed the batch size fails.
    """
    import onnxruntime as ort
    import torch

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    score_error, map_error = 0.0, 0.0
    for batch in (images, images[:1]):
        onnx_scores, onnx_maps = session.run([SCORE_NAME, MAP_OUTPUT], {INPUT_NAME: batch})
        with torch.inference_mode():
            torch_scores, torch_maps = (t.numpy() for t in model.eval()(torch.from_numpy(batch)))
        scale = max(float(np.max(np.abs(torch_scores))), 1e-12)
        score_error = max(score_error, float(np.max(np.abs(onnx_scores - torch_scores))) / scale)
        map_error = max(map_error, float(np.max(np.abs(onnx_maps - torch_maps))) / scale)
    return score_error, map_error


def export_map_package(
    model: nn.Module, directory: Path, card: ModelCard, parity_images: np.ndarray
) -> ModelPackage:
    """Export, check (ONNX checker, input/output contract, parity with torch) and package a model whose
    forward returns (score, anomaly_map)."""

    def map_and_scores_as_torch(path: Path, input_shape: tuple[int, int, int]) -> dict[str, float]:
        check_map_output(path, input_shape)
        images = np.ascontiguousarray(parity_images, dtype=np.float32)
        score_error, map_error = map_parity_errors(model, path, images)
        if score_error > MAP_SCORE_PARITY or map_error > MAP_PARITY:
            raise ExportError(
                f"ONNX Runtime and torch disagree (relative score error {score_error:.1e}, map error "
                f"{map_error:.1e}; allowed {MAP_SCORE_PARITY:.0e} and {MAP_PARITY:.0e}); the exported graph "
                "is not the trained model; do not ship it"
            )
        return {"score_parity_error": score_error, "map_parity_error": map_error}

    return export_checked(model, directory, card, map_and_scores_as_torch, (SCORE_NAME, MAP_OUTPUT))
