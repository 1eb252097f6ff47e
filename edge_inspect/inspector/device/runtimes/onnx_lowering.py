"""Lower an exported ONNX graph to the opset that onnx2torch converts, without changing what it computes.

torch's exporter writes opset 20. onnx2torch 1.5 converts the reduce ops, Pad, AveragePool and Resize only in
their opset-17 forms, and has no converter at all for the revisions 18-20 that only added element types
(float8, int4, bool) to Reshape, Shape, Cast and others. Every node lowered here is one whose newer revision
means exactly its opset-17 form given the attributes and inputs it uses; a node that uses a newer feature, or
an op whose newer revision this module does not know, is refused by name, so the torch runtime never runs a
graph that differs from the one ONNX Runtime runs. The result is checked with the ONNX checker at opset 17.

onnx2torch also refuses `Reshape(allowzero=1)`, which torch's exporter always writes; with a constant target
shape that has no 0 the flag changes nothing, so it is dropped there.

Imports onnx only: no torch, no onnx2torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import onnx
from onnx import defs, helper, numpy_helper

TARGET_OPSET = 17

# Revisions 18-20 that only added element types (float8, int4, bool, string), which the exported vision models
# do not use: their opset-17 form is the same node.
TYPE_ONLY_REVISIONS = frozenset(
    {
        "Cast",
        "CastLike",
        "Constant",
        "ConstantOfShape",
        "DequantizeLinear",
        "Equal",
        "Identity",
        "IsInf",
        "IsNaN",
        "QuantizeLinear",
        "Reshape",
        "Shape",
        "Size",
    }
)

# Opset 18 moved `axes` of these from an attribute to an optional input (ReduceSum did so in opset 13).
REDUCE_OPS = frozenset(
    {
        "ReduceL1",
        "ReduceL2",
        "ReduceLogSum",
        "ReduceLogSumExp",
        "ReduceMax",
        "ReduceMean",
        "ReduceMin",
        "ReduceProd",
        "ReduceSumSquare",
    }
)

Initializers = Mapping[str, onnx.TensorProto]


class UnsupportedGraphError(RuntimeError):
    """A graph the torch runtime cannot run exactly as ONNX Runtime does."""


def attributes(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def text(value: object) -> str:
    """String attributes come back from protobuf as bytes."""
    return value.decode() if isinstance(value, bytes) else str(value)


def refuse(node: onnx.NodeProto, why: str) -> UnsupportedGraphError:
    return UnsupportedGraphError(
        f"the torch runtime cannot run node {node.name or '(unnamed)'} ({node.op_type}): {why}; "
        "serve this model with runtime='ort'"
    )


def optional_input(node: onnx.NodeProto, index: int) -> str:
    """The name of input `index`, or '' where it is absent (ONNX marks a skipped optional input with '')."""
    return node.input[index] if len(node.input) > index else ""


def constant_ints(node: onnx.NodeProto, name: str, initializers: Initializers, what: str) -> list[int]:
    if name not in initializers:
        raise refuse(node, f"its {what} is computed at run time; only an initializer can be lowered")
    return [int(v) for v in numpy_helper.to_array(initializers[name]).reshape(-1)]


def rebuilt(node: onnx.NodeProto, inputs: list[str], attrs: dict[str, Any]) -> onnx.NodeProto:
    return helper.make_node(node.op_type, inputs, list(node.output), name=node.name, **attrs)


def lower_reduce(node: onnx.NodeProto, initializers: Initializers) -> onnx.NodeProto:
    attrs = attributes(node)
    noop = attrs.pop("noop_with_empty_axes", 0)
    axes_name = optional_input(node, 1)
    axes = constant_ints(node, axes_name, initializers, "axes") if axes_name else []
    if not axes and noop:
        raise refuse(node, "noop_with_empty_axes=1 with no axes (an identity) has no opset-17 form")
    if axes:
        attrs["axes"] = axes
    return rebuilt(node, [node.input[0]], attrs)


def lower_pad(node: onnx.NodeProto, initializers: Initializers) -> onnx.NodeProto:
    del initializers
    if text(attributes(node).get("mode", "constant")) == "wrap":
        raise refuse(node, "mode 'wrap' (opset 19) has no opset-17 form")
    if optional_input(node, 3):
        raise refuse(node, "padding selected axes (the opset-18 'axes' input) has no opset-17 form")
    return node


def lower_average_pool(node: onnx.NodeProto, initializers: Initializers) -> onnx.NodeProto:
    del initializers
    attrs = attributes(node)
    if any(d != 1 for d in attrs.pop("dilations", [])):
        raise refuse(node, "dilations (opset 19) have no opset-17 form")
    return rebuilt(node, list(node.input), attrs)


def lower_resize(node: onnx.NodeProto, initializers: Initializers) -> onnx.NodeProto:
    del initializers
    attrs = attributes(node)
    if attrs.pop("antialias", 0):
        raise refuse(node, "antialias=1 (opset 18) has no opset-17 form")
    if "axes" in attrs:
        raise refuse(node, "resizing selected axes (opset 18) has no opset-17 form")
    if text(attrs.pop("keep_aspect_ratio_policy", "stretch")) != "stretch":
        raise refuse(node, "keep_aspect_ratio_policy other than 'stretch' (opset 18) has no opset-17 form")
    if text(attrs.get("coordinate_transformation_mode", "")) == "half_pixel_symmetric":
        raise refuse(
            node, "coordinate_transformation_mode 'half_pixel_symmetric' (opset 19) is not in opset 17"
        )
    return rebuilt(node, list(node.input), attrs)


def drop_allowzero(node: onnx.NodeProto, initializers: Initializers) -> onnx.NodeProto:
    attrs = attributes(node)
    if not attrs.pop("allowzero", 0):
        return node
    shape = constant_ints(node, node.input[1], initializers, "target shape (with allowzero=1)")
    if 0 in shape:
        raise refuse(node, f"allowzero=1 with a 0 in the target shape {shape} is not supported by onnx2torch")
    return rebuilt(node, list(node.input), attrs)


Lowering = Callable[[onnx.NodeProto, Initializers], onnx.NodeProto]
LOWERINGS: dict[str, Lowering] = {
    **dict.fromkeys(REDUCE_OPS, lower_reduce),
    "Pad": lower_pad,
    "AveragePool": lower_average_pool,
    "Resize": lower_resize,
}


def lower_node(node: onnx.NodeProto, opset: int, initializers: Initializers) -> onnx.NodeProto:
    if node.domain not in ("", "ai.onnx"):
        raise refuse(node, f"custom domain {node.domain!r}")
    try:
        revision = defs.get_schema(node.op_type, opset).since_version
    except defs.SchemaError as exc:
        raise refuse(node, f"no ONNX opset-{opset} operator of that name") from exc
    if node.op_type == "Reshape":
        node = drop_allowzero(node, initializers)
    if revision <= TARGET_OPSET or node.op_type in TYPE_ONLY_REVISIONS:
        return node
    if node.op_type in LOWERINGS:
        return LOWERINGS[node.op_type](node, initializers)
    raise refuse(node, f"its opset-{revision} revision has no known opset-{TARGET_OPSET} equivalent")


def default_opset(model: onnx.ModelProto) -> int:
    versions = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    if not versions:
        raise UnsupportedGraphError("the model imports no default ONNX opset; re-export it")
    return versions[0]


def lower_for_onnx2torch(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` at opset 17 (or its own, if older), same meaning; refuses what it cannot lower."""
    opset = default_opset(model)
    lowered = onnx.ModelProto()
    lowered.CopyFrom(model)
    graph = lowered.graph
    initializers = {init.name: init for init in graph.initializer}
    nodes = [lower_node(node, opset, initializers) for node in graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    for entry in lowered.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = min(opset, TARGET_OPSET)
    try:
        onnx.checker.check_model(lowered)
    except onnx.checker.ValidationError as exc:
        raise UnsupportedGraphError(
            f"the graph lowered to opset {TARGET_OPSET} does not pass the ONNX checker ({exc}); serve this "
            "model with runtime='ort'"
        ) from exc
    return lowered
