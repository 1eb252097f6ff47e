"""Tiny hand-built ONNX model packages with known behaviour, for testing the service around a model."""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

from edge_inspect.inspector.preprocess import PreprocessRecipe
from edge_inspect.models.package import ModelCard, Thresholds, write_package

TOY_SIZE = 32


def make_toy_package(
    directory: Path,
    with_map: bool = False,
    version: str = "1",
    roi: tuple[int, int, int, int] | None = None,
) -> Path:
    """score = mean (or, with a map, max) brightness in [0, 1]; map = per-pixel brightness."""
    directory.mkdir(parents=True, exist_ok=True)
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, TOY_SIZE, TOY_SIZE])
    score = helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"])
    axes = helper.make_tensor("axes", TensorProto.INT64, [3], [1, 2, 3])
    nodes = []
    outputs = [score]
    if with_map:
        amap = helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, ["batch", TOY_SIZE, TOY_SIZE])
        squeeze_axes = helper.make_tensor("squeeze_axes", TensorProto.INT64, [1], [1])
        nodes += [
            helper.make_node("Squeeze", ["image", "squeeze_axes"], ["anomaly_map"]),
            helper.make_node("ReduceMax", ["image", "axes"], ["score"], keepdims=0),
        ]
        outputs.append(amap)
        initializers = [axes, squeeze_axes]
    else:
        nodes.append(helper.make_node("ReduceMean", ["image", "axes"], ["score"], keepdims=0))
        initializers = [axes]
    graph = helper.make_graph(nodes, "toy", [image], outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    tmp = directory / "export.onnx"
    onnx.save(model, tmp)
    card = ModelCard(
        name="toy-brightness" + ("-map" if with_map else ""),
        version=version,
        family="toy",
        preprocess=PreprocessRecipe(TOY_SIZE, TOY_SIZE, "mono", (0.0,), (1.0,), roi=roi),
        thresholds=Thresholds(threshold=0.5, score_low=0.0, score_high=1.0, review_band=0.05),
        map_output="anomaly_map" if with_map else None,
        classes=("bright",),
        created_at="2026-11-21T00:00:00Z",
    )
    write_package(directory, tmp, card)
    return directory
