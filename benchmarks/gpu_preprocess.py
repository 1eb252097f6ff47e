"""GPU preprocessing benchmark: the fused Triton kernel against separate torch ops and the CPU, next to what
the card itself can do (device-to-device copy bandwidth, dense fp16 matmul).

Run from the repository root on a CUDA machine:

    .venv/bin/python -m benchmarks.gpu_preprocess [--batch 8] [--repeats 50]

Progress goes to stderr; the last stdout line is one JSON object. GPU times are medians of CUDA-event timings
after warm-up; preprocessing repeats start from a flushed L2, as frames fresh from the cameras would.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
import torch

from edge_inspect.kernels.reference_torch import normalisation
from edge_inspect.preprocess import PreprocessRecipe, crop, preprocess_batch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Larger than any current GPU's L2 (50 MB on H100), so zeroing it evicts everything a repeat left behind.
L2_FLUSH_BYTES = 256 << 20


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def make_frames(count: int, height: int, width: int, seed: int = 0) -> list[np.ndarray]:
    """bgr8 frames of noise over per-channel gradients: realistic entropy, and no channel equals another."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    ramps = np.stack([(x * (2 + c) + y * (3 - c)) % 256 for c in range(3)], axis=2)
    return [(0.6 * ramps + rng.integers(0, 103, ramps.shape, dtype=np.uint8)).astype(np.uint8)
            for _ in range(count)]


def preprocess_traffic_bytes(
    batch: int, frame_height: int, frame_width: int, frame_channels: int, out_channels: int, out_size: int,
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
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for _ in range(repeats)]
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


def cpu_median_ms(fn: Callable[[], Any], repeats: int) -> float:
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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--frame-width", type=int, default=2448)
    parser.add_argument("--frame-height", type=int, default=2048)
    parser.add_argument("--size", type=int, default=512, help="square model input side")
    parser.add_argument("--repeats", type=int, default=50, help="timed repeats per GPU measurement")
    parser.add_argument("--cpu-repeats", type=int, default=3, help="timed repeats per CPU measurement")
    parser.add_argument("--copy-mib", type=int, default=1024, help="buffer size for the copy bandwidth")
    parser.add_argument("--matmul-n", type=int, default=8192, help="square fp16 matmul side")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        sys.exit("gpu_preprocess: unset TRITON_INTERPRET; this benchmark times the compiled kernel")
    if not torch.cuda.is_available():
        sys.exit("gpu_preprocess: needs a CUDA GPU, and torch.cuda.is_available() is False here")
    import triton

    from edge_inspect.kernels.preprocess_triton import preprocess_batch_triton
    from edge_inspect.kernels.reference_torch import pack_frames, preprocess_batch_torch

    device = torch.device("cuda", torch.cuda.current_device())
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "triton": triton.__version__,
    }
    log(f"gpu_preprocess on {results['device']}")

    results["copy_GBps"] = copy_gbps(device, args.copy_mib << 20, args.repeats)
    log(f"device copy: {results['copy_GBps']:.0f} GB/s (read + write)")
    results["matmul_fp16_TFLOPs"] = matmul_tflops(device, args.matmul_n, args.repeats)
    log(f"fp16 matmul, n={args.matmul_n}: {results['matmul_fp16_TFLOPs']:.0f} TFLOP/s")

    recipe = PreprocessRecipe(args.size, args.size, "rgb", mean=IMAGENET_MEAN, std=IMAGENET_STD)
    log(f"making {args.batch} frames of {args.frame_width}x{args.frame_height} bgr8")
    frames = make_frames(args.batch, args.frame_height, args.frame_width)
    packed = pack_frames(frames, device)

    shape = (args.batch, recipe.channels, args.size, args.size)
    fused_out = torch.empty(shape, dtype=torch.float16, device=device)
    torch_out = torch.empty_like(fused_out)
    flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.uint8, device=device)

    def fused() -> torch.Tensor:
        return preprocess_batch_triton(packed, recipe, out=fused_out)

    def separate_ops() -> torch.Tensor:
        return preprocess_batch_torch(packed, recipe, out=torch_out)

    log("timing the fused Triton kernel")
    triton_ms = gpu_median_ms(fused, args.repeats, flush=flush)
    triton_call_ms = host_call_ms(fused, args.repeats)
    log("timing the torch reference (separate ops)")
    torch_ms = gpu_median_ms(separate_ops, args.repeats, flush=flush)
    traffic = preprocess_traffic_bytes(args.batch, args.frame_height, args.frame_width, 3, recipe.channels,
                                       args.size, fused_out.element_size())
    triton_gbps = traffic / triton_ms / 1e6

    log("timing the numpy reference and OpenCV on the CPU")
    expected = preprocess_batch(frames, recipe)
    numpy_ms = cpu_median_ms(lambda: preprocess_batch(frames, recipe), args.cpu_repeats)
    cv2_ms = cpu_median_ms(lambda: cv2_preprocess(frames, recipe), args.cpu_repeats)

    def max_error(result: torch.Tensor | np.ndarray) -> float:
        values = result.float().cpu().numpy() if isinstance(result, torch.Tensor) else result
        return float(np.abs(values - expected).max())

    results["preprocess"] = {
        "batch": args.batch,
        "frame": f"{args.frame_width}x{args.frame_height} bgr8",
        "output": f"{args.batch}x{recipe.channels}x{args.size}x{args.size} float16",
        "traffic_bytes": traffic,
        "upload_pinned_ms": upload_ms(device, packed.data.numel(), args.repeats),
        "triton_ms": triton_ms,
        "triton_call_ms": triton_call_ms,
        "triton_GBps": triton_gbps,
        "triton_fraction_of_copy": triton_gbps / results["copy_GBps"],
        "torch_reference_ms": torch_ms,
        "numpy_reference_ms": numpy_ms,
        "cv2_ms": cv2_ms,
        "cv2_threads": cv2.getNumThreads(),
        "max_abs_error_vs_numpy": {
            "triton": max_error(fused()),
            "torch_reference": max_error(separate_ops()),
            "cv2": max_error(cv2_preprocess(frames, recipe)),
        },
    }
    log(json.dumps(results["preprocess"], indent=2))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
