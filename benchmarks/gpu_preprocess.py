"""GPU preprocessing benchmark: the fused Triton kernel against the other ways to get the model input, next
to what the card itself can do (device-to-device copy bandwidth, dense fp16 matmul).

Run from the repository root on a CUDA machine:

    .venv/bin/python -m benchmarks.gpu_preprocess [--batch 8] [--repeats 50]

Side by side, on the same frames (8 of 2448x2048 bgr8 to 8x3x512x512 float16 by default):

- triton: the fused kernel (`edge_inspect.kernels.preprocess_triton`), one launch for the batch;
- torch_reference: the plain-torch spec of that kernel (`edge_inspect.kernels.reference_torch`);
- torchvision_ops: `torchvision.transforms.v2.functional` ops one after another, as an integrator writes them;
- onnx_folded: the preprocessing as an ONNX graph that takes the uint8 batch, run by ONNX Runtime through
  IOBinding on the card;
- numpy_reference and cv2: the CPU paths.

Progress goes to stderr; the last stdout line is one JSON object. GPU times are medians of CUDA-event timings
after warm-up; preprocessing repeats start from a flushed L2, as frames fresh from the cameras would.

`--device cpu --smoke` runs every path but the Triton kernel on the CPU, with small frames and few repeats:
it checks that the script works where there is no GPU (CI) and measures nothing worth reporting.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import torch
import torchvision
from torchvision.transforms.v2 import functional as tvf

from edge_inspect.inspector.preprocess import PreprocessRecipe, crop, preprocess_batch, value_scale
from edge_inspect.kernels.reference_torch import (
    PackedFrames,
    normalisation,
    pack_frames,
    preprocess_batch_torch,
)

if TYPE_CHECKING:
    import onnx

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Larger than any current GPU's L2 (50 MB on H100), so zeroing it evicts everything a repeat left behind.
L2_FLUSH_BYTES = 256 << 20
# The targets for the fused kernel.
TARGET_FRACTION_OF_COPY = 0.7
TARGET_SPEEDUP_VS_SEPARATE_OPS = 5.0
# Same downscale ratios as the default 2448x2048 -> 512 (4.78 across, 4 down), so the smoke run samples the
# way the real one does; sizes small enough for a few seconds on two CPU cores.
SMOKE_DEFAULTS = {
    "batch": 2,
    "frame_width": 612,
    "frame_height": 512,
    "size": 128,
    "repeats": 3,
    "cpu_repeats": 1,
    "copy_mib": 64,
    "matmul_n": 1024,
}
# Opset 17 has every op the folded graph needs; IR version 8 is the one that goes with it, old enough for
# any ONNX Runtime that knows opset 17.
FOLDED_OPSET = 17
FOLDED_IR_VERSION = 8


class PathSkipped(Exception):
    """A comparison path that cannot run on this machine; its reason goes into the results."""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def make_frames(count: int, height: int, width: int, seed: int = 0) -> list[np.ndarray]:
    """bgr8 frames of noise over per-channel gradients: realistic entropy, and no channel equals another."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    ramps = np.stack([(x * (2 + c) + y * (3 - c)) % 256 for c in range(3)], axis=2)
    return [
        (0.6 * ramps + rng.integers(0, 103, ramps.shape, dtype=np.uint8)).astype(np.uint8)
        for _ in range(count)
    ]


def preprocess_traffic_bytes(
    batch: int,
    frame_height: int,
    frame_width: int,
    frame_channels: int,
    out_channels: int,
    out_size: int,
    out_itemsize: int,
) -> int:
    """Every input byte read once and every output byte written once: the floor for a kernel that reads whole
    frames. Bilinear downscaling touches only the rows it samples, so a kernel can beat this figure."""
    frame_bytes = frame_height * frame_width * frame_channels
    return batch * (frame_bytes + out_channels * out_size * out_size * out_itemsize)


def gpu_median_ms(
    fn: Callable[[], Any], repeats: int, warmup: int = 5, flush: torch.Tensor | None = None
) -> float:
    """Median CUDA-event time of one call. Zeroing `flush` first also keeps the GPU busy while the host
    enqueues the call, so the events time the GPU work rather than the Python launch overhead."""
    for _ in range(warmup):
        fn()
    events = [
        (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)
    ]
    for start, end in events:
        if flush is not None:
            flush.zero_()
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(start.elapsed_time(end) for start, end in events)


def host_call_ms(fn: Callable[[], Any], repeats: int) -> float:
    """Wall time per call of back-to-back calls, launch overhead included: what a pipeline calling it sees."""
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1e3 / repeats


def cpu_median_ms(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    """Median wall time of one call after `warmup` untimed calls (caches, lazily built tables, allocator)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def cv2_preprocess(frames: list[np.ndarray], recipe: PreprocessRecipe) -> np.ndarray:
    """bgr8 frames the way a CPU pipeline would do it with OpenCV. Its uint8 resize uses fixed-point weights,
    so it is close to, not equal to, the reference."""
    to_model = {"rgb": cv2.COLOR_BGR2RGB, "mono": cv2.COLOR_BGR2GRAY}
    scale, mean, inv_std = (np.asarray(v, np.float32) for v in normalisation(recipe, torch.uint8))
    out = np.empty((len(frames), recipe.channels, recipe.height, recipe.width), dtype=np.float32)
    for index, frame in enumerate(frames):
        size = (recipe.width, recipe.height)
        image = cv2.resize(crop(frame, recipe.roi), size, interpolation=cv2.INTER_LINEAR)
        if recipe.colour in to_model:
            image = cv2.cvtColor(image, to_model[recipe.colour])
        image = image.reshape(recipe.height, recipe.width, recipe.channels).astype(np.float32)
        out[index] = ((image * scale - mean) * inv_std).transpose(2, 0, 1)
    return out


def batch_nhwc(packed: PackedFrames) -> torch.Tensor:
    """The packed batch as one (N, H, W, C) view, the layout torchvision and an ONNX graph take; no copy.

    Only a batch of same-sized frames packed back to back has that layout, as a line of identical cameras
    gives; the fused kernel and the torch reference need no such thing.
    """
    height, width, channels = packed.heights[0], packed.widths[0], packed.channels
    frame_elements = height * width * channels
    if (
        set(packed.heights) != {height}
        or set(packed.widths) != {width}
        or packed.offsets != tuple(index * frame_elements for index in range(len(packed)))
    ):
        raise ValueError("an (N, H, W, C) view needs frames of one size packed back to back from offset 0")
    return packed.data[: len(packed) * frame_elements].view(len(packed), height, width, channels)


def torchvision_ops(batch: torch.Tensor, recipe: PreprocessRecipe) -> torch.Tensor:
    """(N, H, W, 3) bgr8 frames to the (N, 3, height, width) float16 model input with torchvision's v2
    functional ops, one after another, on the batch's device.

    Batched rather than per frame: torchvision takes leading batch dims, and one call per op for the whole
    batch launches far fewer kernels than a loop over frames, so the fused kernel meets the stronger way of
    writing it. Resize comes before the conversion to float, the usual order. For a uint8 image torchvision
    interpolates in float32 on CUDA and rounds the result back to uint8 (half a level of error); on the CPU
    its native uint8 kernel rounds after each of its two passes (up to a level).
    """
    if recipe.colour != "rgb" or recipe.roi is not None:
        raise ValueError(f"the torchvision path is written for whole bgr8 frames to rgb, not {recipe}")
    image = batch.permute(0, 3, 1, 2)  # HWC -> CHW, a view
    image = tvf.permute_channels(image, [2, 1, 0])  # BGR -> RGB
    image = tvf.resize(
        image, [recipe.height, recipe.width], interpolation=tvf.InterpolationMode.BILINEAR, antialias=False
    )
    image = tvf.to_dtype(image, torch.float32, scale=True)
    image = tvf.normalize(image, list(recipe.mean), list(recipe.std))
    return image.to(torch.float16)


def folded_preprocess_graph(
    batch: int, frame_height: int, frame_width: int, recipe: PreprocessRecipe
) -> onnx.ModelProto:
    """The preprocessing as an ONNX graph: uint8 (N, H, W, 3) bgr frames in, the (N, 3, height, width)
    float16 model input out, what an integrator folds in front of the model.

    Transpose to NCHW first: ONNX Runtime's CUDA Resize interpolates the two innermost axes of a 4-D
    tensor. The samples are cast to float before resizing so that the graph is as exact as the reference (a
    uint8 Resize would round); the channel flip and the normalisation come after it, on the small resized
    tensor. Shapes are static (a line's cameras and batch size are fixed), which lets ONNX Runtime plan
    every buffer.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if recipe.colour != "rgb" or recipe.roi is not None:
        raise ValueError(f"the folded graph is written for whole bgr8 frames to rgb, not {recipe}")
    # Multiply then subtract with the constants the numpy reference rounds to float32, in its order.
    scale = value_scale(np.dtype(np.uint8))
    gain = np.asarray([scale / s for s in recipe.std], dtype=np.float32).reshape(1, 3, 1, 1)
    offset = np.asarray([m / s for m, s in zip(recipe.mean, recipe.std, strict=True)], dtype=np.float32)
    out_shape = [batch, 3, recipe.height, recipe.width]
    initialisers = [
        numpy_helper.from_array(np.asarray(out_shape, dtype=np.int64), "sizes"),
        numpy_helper.from_array(np.asarray([2, 1, 0], dtype=np.int64), "rgb_order"),
        numpy_helper.from_array(gain, "gain"),
        numpy_helper.from_array(offset.reshape(1, 3, 1, 1), "offset"),
    ]
    nodes = [
        helper.make_node("Transpose", ["frames"], ["planes"], perm=[0, 3, 1, 2]),
        helper.make_node("Cast", ["planes"], ["samples"], to=TensorProto.FLOAT),
        # half_pixel is the reference's convention; its clamp at 0 never applies when downscaling.
        helper.make_node(
            "Resize",
            ["samples", "", "", "sizes"],
            ["resized"],
            mode="linear",
            coordinate_transformation_mode="half_pixel",
        ),
        helper.make_node("Gather", ["resized", "rgb_order"], ["rgb"], axis=1),
        helper.make_node("Mul", ["rgb", "gain"], ["scaled"]),
        helper.make_node("Sub", ["scaled", "offset"], ["normalised"]),
        helper.make_node("Cast", ["normalised"], ["model_input"], to=TensorProto.FLOAT16),
    ]
    graph = helper.make_graph(
        nodes,
        "preprocess_bgr8_to_rgb_f16",
        [helper.make_tensor_value_info("frames", TensorProto.UINT8, [batch, frame_height, frame_width, 3])],
        [helper.make_tensor_value_info("model_input", TensorProto.FLOAT16, out_shape)],
        initialisers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", FOLDED_OPSET)])
    model.ir_version = FOLDED_IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def folded_graph_runner(
    batch: torch.Tensor, recipe: PreprocessRecipe, out: torch.Tensor
) -> tuple[Callable[[], torch.Tensor], str]:
    """A call that runs the folded graph on `batch` into `out` through IOBinding, and the execution provider
    it runs on: the CUDA provider for CUDA tensors, the CPU provider for CPU tensors.

    Raises PathSkipped where ONNX Runtime cannot run it on the batch's device.
    """
    try:
        import onnxruntime as ort
    except ImportError as error:
        raise PathSkipped(f"onnxruntime does not import ({error}); install onnxruntime-gpu") from error
    from edge_inspect.inspector.device.runtimes.base import NUMPY_TYPES
    from edge_inspect.inspector.device.runtimes.ort_iobinding import cuda_provider_options
    from edge_inspect.inspector.infer import session_options

    device = batch.device
    device_id = device.index or 0
    model = folded_preprocess_graph(batch.shape[0], batch.shape[1], batch.shape[2], recipe)
    options = session_options()
    stream: torch.cuda.Stream | None = None
    providers: list[str | tuple[str, dict[str, str]]] = ["CPUExecutionProvider"]
    if device.type == "cuda":
        available = ort.get_available_providers()
        if "CUDAExecutionProvider" not in available:
            raise PathSkipped(
                f"this onnxruntime {ort.__version__} build has no CUDA execution provider (it has "
                f"{available}); install onnxruntime-gpu"
            )
        # ONNX Runtime runs on a stream of ours, ordered with torch's like OrtIoBindingRuntime does.
        stream = torch.cuda.Stream(device=device)
        providers.insert(0, ("CUDAExecutionProvider", cuda_provider_options(device_id, stream.cuda_stream)))
        # A node left to the CPU would time host copies instead of the folded graph: refuse instead.
        options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    # ONNX Runtime raises its own exception classes, which derive from Exception alone.
    try:
        session = ort.InferenceSession(model.SerializeToString(), sess_options=options, providers=providers)
    except Exception as error:
        raise PathSkipped(f"ONNX Runtime cannot run the folded graph on {device}: {error}") from error
    provider = session.get_providers()[0]
    if device.type == "cuda" and provider != "CUDAExecutionProvider":
        raise PathSkipped(
            f"ONNX Runtime started {session.get_providers()}, not the CUDA execution provider; check that "
            "onnxruntime-gpu matches the installed CUDA and cuDNN"
        )
    binding = session.io_binding()
    binding.bind_input("frames", device.type, device_id, np.uint8, tuple(batch.shape), batch.data_ptr())
    binding.bind_output(
        "model_input", device.type, device_id, NUMPY_TYPES[out.dtype], tuple(out.shape), out.data_ptr()
    )

    def run() -> torch.Tensor:
        if stream is None:
            session.run_with_iobinding(binding)
            return out
        caller = torch.cuda.current_stream(device)
        stream.wait_stream(caller)
        session.run_with_iobinding(binding)
        caller.wait_stream(stream)
        return out

    return run, provider


def copy_gbps(device: torch.device, nbytes: int, repeats: int) -> float:
    """Device-to-device copy bandwidth, counting each byte read and written as the kernel's figure does."""
    source = torch.empty(nbytes, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    return 2 * nbytes / gpu_median_ms(lambda: target.copy_(source), repeats) / 1e6


def matmul_tflops(device: torch.device, n: int, repeats: int) -> float:
    a, b = (torch.randn(n, n, dtype=torch.float16, device=device) for _ in range(2))
    product = torch.empty_like(a)
    return 2 * n**3 / gpu_median_ms(lambda: torch.mm(a, b, out=product), repeats) / 1e9


def upload_ms(device: torch.device, nbytes: int, repeats: int) -> float:
    """Pinned host to device copy of a packed batch: what a camera batch costs before any kernel runs."""
    pinned = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    target = torch.empty(nbytes, dtype=torch.uint8, device=device)
    return gpu_median_ms(lambda: target.copy_(pinned, non_blocking=True), repeats)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, None where a path did not run."""
    return None if numerator is None or denominator is None else numerator / denominator


def at_least(value: float | None, target: float) -> bool | None:
    return None if value is None else value >= target


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        default="cuda",
        help="cuda: the benchmark; cpu: every path but the Triton kernel, to check the script runs",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help=f"small frames and few repeats ({SMOKE_DEFAULTS}); options given explicitly win",
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--frame-width", type=int, default=2448)
    parser.add_argument("--frame-height", type=int, default=2048)
    parser.add_argument("--size", type=int, default=512, help="square model input side")
    parser.add_argument("--repeats", type=int, default=50, help="timed repeats per device measurement")
    parser.add_argument("--cpu-repeats", type=int, default=3, help="timed repeats per numpy and OpenCV run")
    parser.add_argument("--copy-mib", type=int, default=1024, help="buffer size for the copy bandwidth")
    parser.add_argument("--matmul-n", type=int, default=8192, help="square fp16 matmul side")
    args = parser.parse_args(argv)
    if args.smoke:
        parser.set_defaults(**SMOKE_DEFAULTS)
        args = parser.parse_args(argv)
    return args


def benchmark_device(name: str) -> torch.device:
    """The device to run on, or exit with why the GPU benchmark cannot run here."""
    if name == "cpu":
        return torch.device("cpu")
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        sys.exit(
            "gpu_preprocess: unset TRITON_INTERPRET; this benchmark times the compiled kernel "
            "(--device cpu --smoke checks the script without it)"
        )
    if not torch.cuda.is_available():
        sys.exit(
            "gpu_preprocess: needs a CUDA GPU, and torch.cuda.is_available() is False here "
            "(--device cpu --smoke runs every other path on the CPU)"
        )
    return torch.device("cuda", torch.cuda.current_device())


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = benchmark_device(args.device)
    on_cuda = device.type == "cuda"
    device_name = torch.cuda.get_device_name(device) if on_cuda else f"cpu, {torch.get_num_threads()} threads"
    results: dict[str, Any] = {
        "device": device_name,
        "smoke": args.smoke,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
    }
    log(f"gpu_preprocess on {results['device']}")

    if on_cuda:
        import triton

        results["triton"] = triton.__version__
        results["copy_GBps"] = copy_gbps(device, args.copy_mib << 20, args.repeats)
        log(f"device copy: {results['copy_GBps']:.0f} GB/s (read + write)")
        results["matmul_fp16_TFLOPs"] = matmul_tflops(device, args.matmul_n, args.repeats)
        log(f"fp16 matmul, n={args.matmul_n}: {results['matmul_fp16_TFLOPs']:.0f} TFLOP/s")

    recipe = PreprocessRecipe(args.size, args.size, "rgb", mean=IMAGENET_MEAN, std=IMAGENET_STD)
    log(f"making {args.batch} frames of {args.frame_width}x{args.frame_height} bgr8")
    frames = make_frames(args.batch, args.frame_height, args.frame_width)
    packed = pack_frames(frames, device)
    nhwc = batch_nhwc(packed)

    shape = (args.batch, recipe.channels, args.size, args.size)
    torch_out = torch.empty(shape, dtype=torch.float16, device=device)
    traffic = preprocess_traffic_bytes(
        args.batch,
        args.frame_height,
        args.frame_width,
        3,
        recipe.channels,
        args.size,
        torch_out.element_size(),
    )
    preprocess: dict[str, Any] = {
        "batch": args.batch,
        "frame": f"{args.frame_width}x{args.frame_height} bgr8",
        "output": f"{args.batch}x{recipe.channels}x{args.size}x{args.size} float16",
        "traffic_bytes": traffic,
    }
    # Every path's output, recomputed once after its timing for the error against the numpy reference.
    outputs: dict[str, Callable[[], torch.Tensor]] = {}
    if on_cuda:
        flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.uint8, device=device)

        def device_ms(fn: Callable[[], Any]) -> float:
            return gpu_median_ms(fn, args.repeats, flush=flush)
    else:

        def device_ms(fn: Callable[[], Any]) -> float:
            return cpu_median_ms(fn, args.repeats)

    triton_ms: float | None = None
    fraction_of_copy: float | None = None
    if on_cuda:
        from edge_inspect.kernels.preprocess_triton import preprocess_batch_triton

        fused_out = torch.empty_like(torch_out)
        outputs["triton"] = lambda: preprocess_batch_triton(packed, recipe, out=fused_out)
        log("timing the fused Triton kernel")
        triton_ms = device_ms(outputs["triton"])
        triton_gbps = traffic / triton_ms / 1e6
        fraction_of_copy = triton_gbps / results["copy_GBps"]
        preprocess |= {
            "upload_pinned_ms": upload_ms(device, packed.data.numel(), args.repeats),
            "triton_ms": triton_ms,
            "triton_call_ms": host_call_ms(outputs["triton"], args.repeats),
            "triton_GBps": triton_gbps,
            "triton_fraction_of_copy": fraction_of_copy,
        }

    outputs["torch_reference"] = lambda: preprocess_batch_torch(packed, recipe, out=torch_out)
    log("timing the torch reference (separate ops)")
    preprocess["torch_reference_ms"] = device_ms(outputs["torch_reference"])
    outputs["torchvision_ops"] = lambda: torchvision_ops(nhwc, recipe)
    log("timing torchvision's transforms (separate ops)")
    preprocess["torchvision_ops_ms"] = device_ms(outputs["torchvision_ops"])
    log("timing the preprocessing folded into an ONNX graph")
    try:
        folded, provider = folded_graph_runner(nhwc, recipe, torch.empty_like(torch_out))
        outputs["onnx_folded"] = folded
        preprocess["onnx_folded"] = {"ms": device_ms(folded), "provider": provider}
    except PathSkipped as skipped:
        log(f"onnx_folded skipped: {skipped}")
        preprocess["onnx_folded"] = {"skipped": str(skipped)}

    log("timing the numpy reference and OpenCV on the CPU")
    expected = preprocess_batch(frames, recipe)
    numpy_ms = cpu_median_ms(lambda: preprocess_batch(frames, recipe), args.cpu_repeats)
    cv2_ms = cpu_median_ms(lambda: cv2_preprocess(frames, recipe), args.cpu_repeats)
    preprocess |= {"numpy_reference_ms": numpy_ms, "cv2_ms": cv2_ms, "cv2_threads": cv2.getNumThreads()}

    def max_error(values: np.ndarray) -> float:
        return float(np.abs(values - expected).max())

    errors = {name: max_error(output().float().cpu().numpy()) for name, output in outputs.items()}
    preprocess["max_abs_error_vs_numpy"] = errors | {"cv2": max_error(cv2_preprocess(frames, recipe))}

    speedup_vs_torchvision = ratio(preprocess["torchvision_ops_ms"], triton_ms)
    preprocess |= {
        # Device times against each other; cv2's is host wall time, without the upload (upload_pinned_ms).
        "speedup_vs_torchvision_ops": speedup_vs_torchvision,
        "speedup_vs_torch_reference": ratio(preprocess["torch_reference_ms"], triton_ms),
        "speedup_vs_onnx_folded": ratio(preprocess["onnx_folded"].get("ms"), triton_ms),
        "speedup_vs_cv2": ratio(preprocess["cv2_ms"], triton_ms),
        # The "separate-op GPU path" is torchvision's transforms.
        "targets": {
            "bandwidth_fraction_0_7": at_least(fraction_of_copy, TARGET_FRACTION_OF_COPY),
            "speedup_5x_vs_separate_ops": at_least(speedup_vs_torchvision, TARGET_SPEEDUP_VS_SEPARATE_OPS),
        },
    }
    results["preprocess"] = preprocess
    log(json.dumps(preprocess, indent=2))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
