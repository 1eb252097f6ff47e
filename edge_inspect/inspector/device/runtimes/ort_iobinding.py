"""ONNX Runtime with IOBinding: the input read straight from the preprocessing kernel's torch tensor, the
outputs written straight into preallocated torch tensors, no host round trip.

Stream ordering on CUDA. ONNX Runtime launches its kernels on one CUDA stream and does not wait for work on
any other stream: a pointer bound with `bind_input` carries no producer stream, so ONNX Runtime may read the
batch before the kernel that writes it has finished, and silently return wrong scores
(microsoft/onnxruntime#10299, #26609). Here the ordering is explicit:

* the session is created with the CUDA provider options `user_compute_stream` (the integer handle of this
  runtime's torch stream, as a string) and `has_user_compute_stream` = "1", so every ONNX Runtime kernel of a
  run is enqueued on a stream we know;
* before each run, that stream waits on an event recorded on the caller's current stream (the producer), and
  the batch is recorded as in use on it for torch's caching allocator;
* after each run, the caller's stream waits on an event recorded on ONNX Runtime's stream, so whatever the
  caller enqueues next (the copy back to the host) sees the outputs.

Events rather than synchronising the producer stream from the host: the ordering stays on the GPU, exactly for
the work enqueued before `run_device`, and the host does not stall until preprocessing ends (the inspector
overlaps preparing the next batch with inferring this one). The stream is not torch's default stream: its
handle is 0, which ONNX Runtime reads as "no user stream" and then runs on a stream of its own. Running the
preprocessing kernel under `torch.cuda.stream(runtime.stream)` makes both waits trivially satisfied.

Option names as documented for the CUDA execution provider (onnxruntime.ai, "CUDA Execution Provider",
configuration options; python support for `user_compute_stream` since ONNX Runtime 1.17) and present in the
onnxruntime-gpu 1.31.1 provider library.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from edge_inspect.inspector.device.runtimes.base import (
    NUMPY_TYPES,
    TensorSpec,
    check_batch,
    normalise_device,
    supported_dtype,
)
from edge_inspect.inspector.infer import card_outputs, session_options
from edge_inspect.models.package import ModelPackage

if TYPE_CHECKING:
    import onnxruntime as ort

# ONNX Runtime's type strings for the element types a batch can have.
ORT_TYPES: dict[str, torch.dtype] = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16}


def cuda_provider_options(device_id: int, stream_handle: int) -> dict[str, str]:
    """CUDA execution provider options that make ONNX Runtime launch every kernel on `stream_handle`."""
    if stream_handle == 0:
        raise ValueError(
            "ONNX Runtime reads stream handle 0 (torch's default stream) as 'no user stream' and would run "
            "on a stream of its own, unordered with the preprocessing; pass a torch.cuda.Stream() instead"
        )
    return {
        "device_id": str(device_id),
        "user_compute_stream": str(stream_handle),
        "has_user_compute_stream": "1",
        # Copies for nodes that fall back to the CPU go on the compute stream too, so they stay ordered.
        "do_copy_in_default_stream": "1",
    }


def spec_from_ort(arg: ort.NodeArg) -> TensorSpec:
    """A graph input or output as ONNX Runtime describes it (symbolic dims become None)."""
    dims = tuple(d if isinstance(d, int) else None for d in arg.shape)
    return TensorSpec(arg.name, supported_dtype(ORT_TYPES.get(arg.type), f"{arg.name!r} ({arg.type})"), dims)


def static_shape(declared: Sequence[object], batch_symbol: object, n: int) -> tuple[int, ...] | None:
    """An output's shape for a batch of `n`: the batch axis is the input's batch symbol, every other dim must
    be a number; None where the graph does not say (then the first run tells)."""
    shape = []
    for axis, dim in enumerate(declared):
        if isinstance(dim, int):
            shape.append(dim)
        elif axis == 0 and dim == batch_symbol:
            shape.append(n)
        else:
            return None
    return tuple(shape)


class OrtIoBindingRuntime:
    """An ONNX Runtime session fed and drained through IOBinding, on the CPU or one CUDA device.

    `stream` (CUDA only): the stream ONNX Runtime runs on, by default a new one; it must outlive the runtime.
    One caller at a time: the output buffers are shared between runs.
    """

    def __init__(
        self,
        package: ModelPackage,
        device: torch.device | str,
        threads: int = 0,
        stream: torch.cuda.Stream | None = None,
    ) -> None:
        import onnxruntime as ort

        self.package = package
        self._device = normalise_device(device)
        on_cuda = self._device.type == "cuda"
        if stream is not None and not on_cuda:
            raise ValueError(f"a CUDA stream was given for a runtime on {self._device}; pass none on the CPU")
        self._device_id = self._device.index or 0
        if on_cuda and stream is None:
            stream = torch.cuda.Stream(device=self._device)
        self.stream = stream
        providers: list[str | tuple[str, dict[str, str]]] = ["CPUExecutionProvider"]
        if stream is not None:
            options = cuda_provider_options(self._device_id, stream.cuda_stream)
            providers.insert(0, ("CUDAExecutionProvider", options))
        self.session = ort.InferenceSession(
            str(package.onnx_path), sess_options=session_options(threads), providers=providers
        )
        expected = "CUDAExecutionProvider" if on_cuda else "CPUExecutionProvider"
        if self.session.get_providers()[0] != expected:
            raise RuntimeError(
                f"ONNX Runtime did not start the {expected} (it runs {self.session.get_providers()}); check "
                "that onnxruntime-gpu matches the installed CUDA and cuDNN, or use device='cpu'"
            )
        graph_input = self.session.get_inputs()[0]
        self._batch_symbol = graph_input.shape[0]
        self.input = spec_from_ort(graph_input)
        declared = {o.name: o for o in self.session.get_outputs()}
        self.output_names = card_outputs(package, list(declared))
        self._outputs = {name: declared[name] for name in self.output_names}
        self._output_types = {name: spec_from_ort(arg).dtype for name, arg in self._outputs.items()}
        self._buffers: dict[tuple[int, ...], dict[str, torch.Tensor]] = {}

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def input_dtype(self) -> torch.dtype:
        return self.input.dtype

    @property
    def provider(self) -> str:
        return self.session.get_providers()[0]

    def run_device(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        check_batch(batch, self.input, self._device)
        # A strided view cannot be bound by pointer; for the kernel's (contiguous) output this is a no-op.
        batch = batch.contiguous()
        if self.stream is None:
            return self._run(batch)
        producer = torch.cuda.current_stream(self._device)
        self.stream.wait_stream(producer)
        # The caller may drop the batch right after this call; its memory must not be handed out again
        # before ONNX Runtime's stream has read it.
        batch.record_stream(self.stream)
        outputs = self._run(batch)
        # ONNX Runtime synchronises its stream at the end of a run by default; waiting on it keeps the
        # outputs ordered for the caller even where that is turned off.
        producer.wait_stream(self.stream)
        return outputs

    def _run(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        buffers = self._buffers.get(tuple(batch.shape))
        if buffers is None:
            buffers = self._allocate(batch)
        binding = self._bound_input(batch)
        for name, tensor in buffers.items():
            binding.bind_output(
                name,
                self._device.type,
                self._device_id,
                NUMPY_TYPES[tensor.dtype],
                tuple(tensor.shape),
                tensor.data_ptr(),
            )
        self.session.run_with_iobinding(binding)
        return dict(buffers)

    def _bound_input(self, batch: torch.Tensor) -> ort.IOBinding:
        binding = self.session.io_binding()
        binding.bind_input(
            self.input.name,
            self._device.type,
            self._device_id,
            NUMPY_TYPES[batch.dtype],
            tuple(batch.shape),
            batch.data_ptr(),
        )
        return binding

    def _allocate(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """Output buffers for this batch shape, kept for the next batches of that shape (the shape, not just
        the size: a graph with symbolic height and width has outputs that follow them)."""
        n = batch.shape[0]
        declared = {
            name: static_shape(out.shape, self._batch_symbol, n) for name, out in self._outputs.items()
        }
        shapes = self._probe_shapes(batch) if None in declared.values() else declared
        # Allocated on ONNX Runtime's stream, which writes them; they live as long as the runtime.
        context = torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()
        with context:
            buffers = {
                name: torch.empty(shapes[name], dtype=dtype, device=self._device)  # type: ignore[arg-type]
                for name, dtype in self._output_types.items()
            }
        self._buffers[tuple(batch.shape)] = buffers
        return buffers

    def _probe_shapes(self, batch: torch.Tensor) -> dict[str, tuple[int, ...]]:
        """Output shapes from one run into memory ONNX Runtime allocates, for graphs whose output metadata
        leaves a non-batch dim symbolic; done once per batch shape."""
        binding = self._bound_input(batch)
        for name in self._outputs:
            binding.bind_output(name, self._device.type, self._device_id)
        self.session.run_with_iobinding(binding)
        values = binding.get_outputs()
        return {name: tuple(value.shape()) for name, value in zip(self._outputs, values, strict=True)}
