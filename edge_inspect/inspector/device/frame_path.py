"""Where the inspector decodes, preprocesses and infers: the host path or the device path.

* host: OpenCV decode and numpy preprocessing in host memory, then ONNX Runtime (`infer.load_model`);
* device: raw frames through the pinned staging ring and JPEG through torchvision (nvJPEG on CUDA) onto the
  device, the fused preprocessing kernel there, a device runtime (`runtimes.load_runtime`) reading the batch
  in place, and back to the host only the scores and the map rows that postprocessing reads.

`choose_frame_path` decides from the request and what the machine offers (`probe_device_path`), with the
reason that the inspector logs at start. `DeviceFramePath` holds the device path's per-inspector state for
the prepare and infer threads. torch is imported inside the functions: the service's command line is built
on camera gateways that have no torch.
"""

from __future__ import annotations

import contextlib
import importlib.util
import time
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from edge_inspect.bus.contracts import ContractError
from edge_inspect.inspector.infer import choose_providers, cuda_device_count
from edge_inspect.inspector.postprocess import examined_rows
from edge_inspect.inspector.rules import QualityRules
from edge_inspect.models.package import ModelCard

if TYPE_CHECKING:
    import torch

    from edge_inspect.inspector.device.runtimes.base import DeviceRuntime
    from edge_inspect.inspector.preprocess import PreprocessRecipe
    from edge_inspect.inspector.receive import ReceivedFrame
    from edge_inspect.kernels.reference_torch import PackedFrames

FRAME_PATHS: tuple[str, ...] = ("auto", "host", "device")


@dataclass(frozen=True)
class DeviceSupport:
    """What this machine offers the device path: the packages it lacks for it at all, and why it cannot run
    on a CUDA device (None: it can)."""

    missing: tuple[str, ...]
    cuda_blocker: str | None


@dataclass(frozen=True)
class FramePlan:
    """The frame path an inspector runs, and why. `device` is where the device path runs; on the host path
    ONNX Runtime picks its execution provider from --device itself, so it is None there."""

    path: Literal["host", "device"]
    runtime: str  # "ort" or "torch"; the host path always runs ONNX Runtime
    device: str | None  # "cpu" or "cuda"
    reason: str


def required_packages(runtime: str) -> tuple[str, ...]:
    """What the device path imports: torch and torchvision, and onnx and onnx2torch for the torch runtime."""
    return ("torch", "torchvision") + (("onnx", "onnx2torch") if runtime == "torch" else ())


def cuda_blocker(runtime: str) -> str | None:
    """Why the device path cannot run on a CUDA device here; None when it can."""
    if cuda_device_count() == 0:
        return "no CUDA device"
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (the fused preprocessing kernel needs it)"
    import torch

    if not torch.cuda.is_available():
        return "torch cannot use the CUDA device (torch.cuda.is_available() is False)"
    if runtime == "ort" and choose_providers("auto")[0] != "CUDAExecutionProvider":
        return "ONNX Runtime has no CUDA execution provider (install onnxruntime-gpu)"
    return None


def probe_device_path(runtime: str) -> DeviceSupport:
    # find_spec looks packages up without importing them: importing triton fixes whether its kernels run
    # interpreted, which is for the kernel module and the test configuration to decide, not this probe.
    missing = tuple(name for name in required_packages(runtime) if importlib.util.find_spec(name) is None)
    return DeviceSupport(missing, None if missing else cuda_blocker(runtime))


def choose_frame_path(requested: str, device: str, runtime: str, support: DeviceSupport) -> FramePlan:
    """`auto`: the device path on CUDA when it can run there, else the host path; `host` / `device` force one,
    and `device` with --device cpu (or no usable GPU under --device auto) runs on CPU tensors."""
    if requested not in FRAME_PATHS:
        raise ValueError(f"frame path {requested!r} is not one of {FRAME_PATHS}")
    if requested == "host":
        return FramePlan("host", "ort", None, "--frame-path host")
    if requested == "auto":
        if device == "cpu":
            return FramePlan("host", "ort", None, "--device cpu")
        if support.missing:
            return FramePlan("host", "ort", None, f"{', '.join(support.missing)} not installed")
        if support.cuda_blocker is not None:
            return FramePlan("host", "ort", None, support.cuda_blocker)
        return FramePlan("device", runtime, "cuda", "a CUDA device is usable")
    if support.missing:
        raise RuntimeError(
            f"--frame-path device needs {', '.join(support.missing)}, which are not installed; install "
            "edge-inspect[train] or use --frame-path host"
        )
    if device == "cpu":
        return FramePlan("device", runtime, "cpu", "--frame-path device --device cpu")
    if support.cuda_blocker is None:
        return FramePlan("device", runtime, "cuda", "--frame-path device and a CUDA device is usable")
    if device == "cuda":
        raise RuntimeError(
            f"--frame-path device --device cuda cannot run: {support.cuda_blocker}; use --device cpu (the "
            "same path on CPU tensors) or --frame-path auto"
        )
    return FramePlan("device", runtime, "cpu", f"--frame-path device on CPU tensors: {support.cuda_blocker}")


# -- the device path's steps --------------------------------------------------------------------------


def pixel_groups(keys: Sequence[Hashable]) -> list[list[int]]:
    """Indices grouped by key, groups in order of first appearance and indices ascending in each.

    The staging ring and the kernel take one pixel format per call, while a batch may mix cameras; a
    camera keeps one format, so its frames keep their order.
    """
    groups: dict[Hashable, list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    return list(groups.values())


def pixel_format(frame: ReceivedFrame) -> tuple[str, str, int]:
    """The header's encoding, sample type and channel count: decoded frames were checked against it."""
    header = frame.header
    return header.encoding, header.dtype, header.channels


def host_image(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """A frame's pixels in host memory: a JPEG decoded on the device is copied back."""
    return image if isinstance(image, np.ndarray) else image.cpu().numpy()


def fetch_for_postprocess(
    outputs: Mapping[str, torch.Tensor], card: ModelCard, rules: QualityRules
) -> dict[str, np.ndarray | dict[int, np.ndarray]]:
    """The host arrays `postprocess` reads: every score, and of the map only the rows it examines."""
    from edge_inspect.inspector.device.runtimes.base import fetch_outputs

    scores, _ = fetch_outputs(outputs, card.score_output, None, ())
    host: dict[str, np.ndarray | dict[int, np.ndarray]] = {card.score_output: scores}
    if card.map_output is not None:
        # The scores decide which rows; the second call copies them again, a few bytes next to a map row.
        rows = examined_rows(scores, card, rules)
        host[card.map_output] = fetch_outputs(outputs, card.score_output, card.map_output, rows)[1]
    return host


@dataclass(frozen=True)
class DeviceBatch:
    """A batch's frames that decoded, in the order of the rows of `inputs`, the (N, C, H, W) model input on
    the device, complete when this is made."""

    frames: list[ReceivedFrame]
    images: list[np.ndarray | torch.Tensor]  # host views of raw frames, device tensors of JPEG ones
    decode_ms: list[float]
    inputs: torch.Tensor
    preprocess_ms: float


class DeviceFramePath:
    """The device path's state in one inspector: the staging ring, and on CUDA one stream for the prepare
    thread and one for the infer thread. `prepare` is called from the prepare thread only, `infer` from the
    infer thread only.

    Timing: `prepare` synchronises its stream after the JPEG decode, after the staging upload and after
    preprocessing, so that the stage times are the work done, not the time taken to enqueue it. Prepare
    overlaps the previous batch's inference, so these waits cost no throughput, and the batch it hands over
    is complete: the infer thread needs no event from it.
    """

    def __init__(self, device: torch.device) -> None:
        import torch

        from edge_inspect.inspector.device.gpu_frames import PinnedStaging

        self.device = device
        self.staging = PinnedStaging(device)
        on_cuda = device.type == "cuda"
        self._prepare_stream = torch.cuda.Stream(device) if on_cuda else None
        self._infer_stream = torch.cuda.Stream(device) if on_cuda else None

    def prepare(
        self, batch: Sequence[ReceivedFrame], recipe: PreprocessRecipe, dtype: torch.dtype
    ) -> tuple[DeviceBatch | None, list[tuple[ContractError, ReceivedFrame]]]:
        """The batch's model input on the device (None when every frame was rejected), and the rejections."""
        with _on(self._prepare_stream):
            t0 = time.perf_counter()
            pixels = self._decode(batch)
            _wait(self._prepare_stream)
            jpeg_ms = (time.perf_counter() - t0) * 1e3
            rejected = [
                (p, frame) for p, frame in zip(pixels, batch, strict=True) if isinstance(p, ContractError)
            ]
            kept = [index for index, p in enumerate(pixels) if not isinstance(p, ContractError)]
            if not kept:
                return None, rejected
            groups = [
                [kept[i] for i in group] for group in pixel_groups([pixel_format(batch[i]) for i in kept])
            ]
            t1 = time.perf_counter()
            sources = [self._source([pixels[i] for i in group]) for group in groups]
            _wait(self._prepare_stream)
            upload_ms = (time.perf_counter() - t1) * 1e3
            t2 = time.perf_counter()
            inputs = self._preprocess(sources, [len(group) for group in groups], recipe, dtype)
            _wait(self._prepare_stream)
            preprocess_ms = (time.perf_counter() - t2) * 1e3
        order = [index for group in groups for index in group]
        frames = [batch[index] for index in order]
        # A raw frame's decoding is getting its pixels onto the device: the staging copy of its batch.
        decode_ms = [jpeg_ms if frame.header.encoding == "jpeg" else upload_ms for frame in frames]
        images = [pixels[index] for index in order]
        return DeviceBatch(frames, images, decode_ms, inputs, preprocess_ms), rejected

    def _decode(self, batch: Sequence[ReceivedFrame]) -> list[np.ndarray | torch.Tensor | ContractError]:
        """Per frame: a raw frame's zero-copy host view, a JPEG's decoded tensor on the device, or the
        rejection; all JPEGs of the batch are decoded in one call."""
        from edge_inspect.bus.contracts import raw_pixels
        from edge_inspect.inspector.device.gpu_frames import decode_jpeg_batch

        jpegs = [frame for frame in batch if frame.header.encoding == "jpeg"]
        decoded = iter(
            decode_jpeg_batch([f.payload for f in jpegs], [f.header for f in jpegs], self.device)
            if jpegs
            else []
        )
        pixels: list[np.ndarray | torch.Tensor | ContractError] = []
        for frame in batch:
            if frame.header.encoding == "jpeg":
                pixels.append(next(decoded))
                continue
            try:
                pixels.append(raw_pixels(frame.header, frame.payload))
            except ContractError as exc:
                pixels.append(exc)
        return pixels

    def _source(self, images: list[np.ndarray | torch.Tensor]) -> PackedFrames | list[torch.Tensor]:
        """What the kernel takes for one pixel format: raw host frames go through the staging ring, decoded
        tensors are already on the device."""
        if isinstance(images[0], np.ndarray):
            return self.staging.upload_batch(images)[0]
        return images

    def _preprocess(
        self,
        sources: list[PackedFrames | list[torch.Tensor]],
        counts: list[int],
        recipe: PreprocessRecipe,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        """One (N, C, H, W) input for the groups, each written by the kernel into its own rows in turn, so
        that the batch needs no copy to assemble."""
        import torch

        from edge_inspect.kernels import preprocess_batch_gpu

        shape = (sum(counts), recipe.channels, recipe.height, recipe.width)
        inputs = torch.empty(shape, dtype=dtype, device=self.device)
        start = 0
        for source, count in zip(sources, counts, strict=True):
            preprocess_batch_gpu(source, recipe, out=inputs[start : start + count])
            start += count
        return inputs

    def infer(
        self, runtime: DeviceRuntime, inputs: torch.Tensor, card: ModelCard, rules: QualityRules
    ) -> dict[str, Any]:
        """Run the model on the prepared batch and copy back what `postprocess` reads; the copies wait for the
        model, so the time this takes is the inference's."""
        with _on(self._infer_stream):
            if self._infer_stream is not None:
                # The batch was allocated on the prepare stream: its memory must not go to a later batch
                # there before the work queued here has read it, even when a run fails half-way.
                inputs.record_stream(self._infer_stream)
            return fetch_for_postprocess(runtime.run_device(inputs), card, rules)


def _on(stream: torch.cuda.Stream | None) -> contextlib.AbstractContextManager[Any]:
    if stream is None:
        return contextlib.nullcontext()
    import torch

    return torch.cuda.stream(stream)


def _wait(stream: torch.cuda.Stream | None) -> None:
    if stream is not None:
        stream.synchronize()
