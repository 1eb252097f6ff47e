"""The exported model.onnx run through torch (converted by onnx2torch), optionally replayed as CUDA graphs.

This is the second GPU runtime, for integrators to compare with ONNX Runtime: the same graph file, so any
difference is the runtime's. It runs in float32 exactly as exported (no autocast), in eval mode under
`torch.inference_mode`, on the caller's current CUDA stream, so it is ordered with the preprocessing kernel
launched there without any event.

onnx2torch's modules read shape arguments (Reshape targets, Resize sizes, pads, slice bounds) with
`.tolist()`. On the GPU each such read of a device tensor is a host sync, and a sync inside `torch.cuda.graph`
capture is an error. So integer constants stay on the host while the weights move to the device, and the ONNX
`Shape` op is evaluated on the host (`HostShape`): the shape arithmetic of the graph never touches the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import version

import onnx
import torch
from torch import nn

from edge_inspect.inspector.device.runtimes.base import (
    TensorSpec,
    check_batch,
    normalise_device,
    supported_dtype,
)
from edge_inspect.inspector.device.runtimes.onnx_lowering import (
    UnsupportedGraphError,
    attributes,
    lower_for_onnx2torch,
)
from edge_inspect.inspector.infer import card_outputs
from edge_inspect.models.package import ModelPackage

# Eager runs before capture: the first runs allocate, pick cuDNN/cuBLAS algorithms and load kernels, none of
# which may happen during capture.
CAPTURE_WARMUP_RUNS = 3

ONNX_TYPES: dict[int, torch.dtype] = {
    onnx.TensorProto.FLOAT: torch.float32,
    onnx.TensorProto.FLOAT16: torch.float16,
}


class HostShape(nn.Module):
    """ONNX `Shape` (with its opset-15 start/end) as a host int64 tensor: a shape is host metadata anyway."""

    def __init__(self, start: int, end: int | None) -> None:
        super().__init__()
        self.start = start
        self.end = end

    def forward(self, tensor: torch.Tensor) -> torch.Tensor:
        return torch.tensor(tensor.shape[self.start : self.end], dtype=torch.int64)


def graph_input(model: onnx.ModelProto) -> TensorSpec:
    initializers = {init.name for init in model.graph.initializer}
    value = next(v for v in model.graph.input if v.name not in initializers)
    tensor_type = value.type.tensor_type
    dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim)
    dtype = supported_dtype(ONNX_TYPES.get(tensor_type.elem_type), f"input {value.name!r}")
    return TensorSpec(value.name, dtype, dims)


def check_output_producers(model: onnx.ModelProto) -> list[str]:
    """The graph's output names, in the order the converted module returns them.

    onnx2torch returns one value per node that produces a graph output, so each output must come from a node
    of its own with that single output.
    """
    producers = {out: node for node in model.graph.node for out in node.output}
    names = [o.name for o in model.graph.output]
    nodes = [producers.get(name) for name in names]
    shared = len({id(node) for node in nodes}) != len(names)
    if shared or any(node is None or len(node.output) != 1 for node in nodes):
        raise UnsupportedGraphError(
            f"the graph outputs {names} are not each the single output of a node of their own, which "
            "onnx2torch needs to return them separately; serve this model with runtime='ort'"
        )
    return names


def convert(model: onnx.ModelProto) -> torch.fx.GraphModule:
    """onnx2torch's module for an (already lowered) graph, in eval mode, `Shape` evaluated on the host."""
    import onnx2torch
    from onnx2torch.node_converters.shape import OnnxShape

    try:
        module = onnx2torch.convert(model, attach_onnx_mapping=True)
    except NotImplementedError as exc:
        raise UnsupportedGraphError(
            f"onnx2torch {version('onnx2torch')} cannot convert this graph ({exc}); serve this model with "
            "runtime='ort'"
        ) from exc
    shape_nodes = {node.output[0]: node for node in model.graph.node if node.op_type == "Shape"}
    for name, submodule in list(module.named_modules()):
        if isinstance(submodule, OnnxShape):
            attrs = attributes(shape_nodes[submodule.onnx_mapping.outputs[0]])
            end = attrs.get("end")
            module.set_submodule(
                name, HostShape(int(attrs.get("start", 0)), None if end is None else int(end))
            )
    return module.eval()


def place(module: nn.Module, device: torch.device) -> None:
    """Weights and other floating-point tensors to `device`; integer and boolean constants (shapes, axes,
    pads, slice bounds) stay on the host, where onnx2torch reads them without a device sync."""
    host = [
        (owner, key, tensor)
        for owner in module.modules()
        for key, tensor in owner.named_buffers(recurse=False)
        if not tensor.is_floating_point()
    ]
    module.to(device)
    for owner, key, tensor in host:
        setattr(owner, key, tensor)


@dataclass(frozen=True)
class CapturedGraph:
    """One batch shape's CUDA graph and the static tensors it reads and writes."""

    graph: torch.cuda.CUDAGraph
    static_input: torch.Tensor
    static_outputs: dict[str, torch.Tensor]


class TorchRuntime:
    """model.onnx converted to a torch module on the CPU or one CUDA device.

    `cuda_graph`: capture one CUDA graph per batch shape on its first batch and replay it afterwards; outputs
    are then the graph's static tensors, overwritten by the next batch of that shape. One caller at a time.
    """

    def __init__(self, package: ModelPackage, device: torch.device | str, cuda_graph: bool = False) -> None:
        self.package = package
        self._device = normalise_device(device)
        if cuda_graph and self._device.type != "cuda":
            raise ValueError(
                f"cuda_graph=True needs a CUDA device but this runtime runs on {self._device}; "
                "use cuda_graph=False on the CPU"
            )
        self.cuda_graph = cuda_graph
        model = onnx.load(str(package.onnx_path))
        self.input = graph_input(model)
        self._graph_outputs = check_output_producers(model)
        self.output_names = card_outputs(package, self._graph_outputs)
        self.module = convert(lower_for_onnx2torch(model))
        place(self.module, self._device)
        self._graphs: dict[tuple[int, ...], CapturedGraph] = {}

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def input_dtype(self) -> torch.dtype:
        return self.input.dtype

    def run_device(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        check_batch(batch, self.input, self._device)
        with torch.inference_mode():
            if not self.cuda_graph:
                return self._eager(batch)
            # Keyed by the whole shape: copy_ would broadcast a smaller batch into a graph of another shape.
            captured = self._graphs.get(tuple(batch.shape))
            if captured is None:
                captured = self._capture(batch)
            captured.static_input.copy_(batch)
            # Replay launches on the current stream, after the copy and the producer's kernels.
            captured.graph.replay()
            return dict(captured.static_outputs)

    def _eager(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        result = self.module(batch)
        values = (result,) if isinstance(result, torch.Tensor) else tuple(result)
        named = dict(zip(self._graph_outputs, values, strict=True))
        return {name: named[name] for name in self.output_names}

    def _capture(self, batch: torch.Tensor) -> CapturedGraph:
        static_input = batch.clone()
        producer = torch.cuda.current_stream(self._device)
        side = torch.cuda.Stream(device=self._device)
        side.wait_stream(producer)
        with torch.cuda.stream(side):
            for _ in range(CAPTURE_WARMUP_RUNS):
                self._eager(static_input)
        producer.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: the inspector launches the preprocessing kernel from another thread meanwhile; only
        # this thread's CUDA calls may invalidate the capture.
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            static_outputs = self._eager(static_input)
        captured = CapturedGraph(graph, static_input, static_outputs)
        self._graphs[tuple(batch.shape)] = captured
        return captured
