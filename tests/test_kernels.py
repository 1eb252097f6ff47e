"""The fused Triton kernel and the plain-torch reference against the numpy reference, on CPU tensors (Triton
through its interpreter) and on CUDA tensors when there is a GPU."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from edge_inspect.inspector.preprocess import PreprocessRecipe, preprocess, source_coords
from edge_inspect.kernels import preprocess_batch_gpu, triton_available
from edge_inspect.kernels.reference_torch import (
    PackedFrames,
    Roi,
    batch_tables,
    pack_frames,
    preprocess_batch_torch,
)

CUDA = torch.cuda.is_available()
if not CUDA:
    # Before anything imports preprocess_triton: without a GPU its kernel runs only in the interpreter.
    os.environ.setdefault("TRITON_INTERPRET", "1")

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-3}
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")]),
]
Implementation = Callable[..., torch.Tensor]


def make_frame(
    rng: np.random.Generator, height: int, width: int, channels: int, dtype: type = np.uint8
) -> np.ndarray:
    """Noise over a different gradient per channel: nothing is constant, so a wrong index, weight or channel
    order shows up."""
    y, x = np.mgrid[0:height, 0:width]
    step = np.arange(channels)
    ramps = ((x[..., None] * (2 + step) + y[..., None] * (5 - step)) % 97) / 96.0
    values = np.iinfo(dtype).max * (0.6 * ramps + 0.4 * rng.random(ramps.shape))
    return values.round().astype(dtype)


def random_roi(rng: np.random.Generator, height: int, width: int) -> Roi:
    w, h = int(rng.integers(1, width + 1)), int(rng.integers(1, height + 1))
    return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h


def random_case(
    rng: np.random.Generator, colour: str, channels: int, dtype: type = np.uint8
) -> tuple[PreprocessRecipe, list[np.ndarray], list[Roi | None]]:
    """A recipe and a batch of four frames of different sizes: smaller than the output (upscaling), larger
    (downscaling), mixed, and random, with random per-frame ROIs (the second frame always has one)."""
    out_h, out_w = int(rng.integers(12, 49)), int(rng.integers(12, 65))
    sizes = [
        (int(rng.integers(4, out_h)), int(rng.integers(4, out_w))),
        (int(rng.integers(2 * out_h, 121)), int(rng.integers(2 * out_w, 161))),
        (int(rng.integers(4, out_h)), int(rng.integers(2 * out_w, 161))),
        (int(rng.integers(4, 121)), int(rng.integers(4, 161))),
    ]
    frames = [make_frame(rng, h, w, channels, dtype) for h, w in sizes]
    rois = [random_roi(rng, h, w) if i == 1 or rng.random() < 0.5 else None for i, (h, w) in enumerate(sizes)]
    n = 1 if colour == "mono" else 3
    # |mean / std| and |(1 - mean) / std| stay below 4, where a float16 rounding step is within 1e-3.
    mean = tuple(float(m) for m in rng.uniform(0.3, 0.7, n))
    std = tuple(float(s) for s in rng.uniform(0.22, 0.6, n))
    return PreprocessRecipe(out_h, out_w, colour, mean=mean, std=std), frames, rois


def reference(frames: list[np.ndarray], recipe: PreprocessRecipe, rois: list[Roi | None]) -> np.ndarray:
    pairs = zip(frames, rois, strict=True)
    return np.stack([preprocess(frame, replace(recipe, roi=roi)) for frame, roi in pairs])


def triton_module(device: str) -> ModuleType:
    if not triton_available():
        pytest.skip("triton cannot run here")
    from edge_inspect.kernels import preprocess_triton

    if device == "cpu" and not preprocess_triton.INTERPRETED:
        pytest.skip("Triton runs on CPU tensors only in its interpreter (TRITON_INTERPRET=1 before import)")
    return preprocess_triton


def implementation(name: str, device: str) -> Implementation:
    if name == "torch":
        return preprocess_batch_torch
    if name == "dispatcher":
        return preprocess_batch_gpu
    return triton_module(device).preprocess_batch_triton


def assert_close(result: torch.Tensor, expected: np.ndarray, dtype: torch.dtype, label: str) -> float:
    values = result.float().cpu().numpy()
    assert not np.isnan(values).any(), f"{label}: output elements left unwritten"
    error = float(np.abs(values - expected).max())
    assert error <= TOLERANCE[dtype], f"{label}: max abs error {error:.3g} over {TOLERANCE[dtype]:g}"
    return error


def run_poisoned(
    implementation: Implementation,
    packed: PackedFrames,
    recipe: PreprocessRecipe,
    dtype: torch.dtype,
    rois: list[Roi | None] | None,
) -> torch.Tensor:
    """Runs into a NaN-filled buffer one frame larger than the batch; checks the spare frame stays NaN."""
    count = len(packed)
    out = torch.full(
        (count + 1, recipe.channels, recipe.height, recipe.width),
        float("nan"),
        dtype=dtype,
        device=packed.device,
    )
    result = implementation(packed, recipe, dtype, out, rois)
    assert result.shape == (count, *out.shape[1:]) and result.data_ptr() == out.data_ptr()
    assert torch.isnan(out[count]).all(), "wrote past the batch"
    return result


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["torch", "triton"])
@pytest.mark.parametrize("channels", [1, 3], ids=["mono8", "bgr8"])
@pytest.mark.parametrize("colour", ["rgb", "bgr", "mono"])
def test_agrees_with_numpy_reference(colour: str, channels: int, name: str, device: str) -> None:
    run = implementation(name, device)
    rng = np.random.default_rng([ord(colour[0]), channels])
    recipe, frames, rois = random_case(rng, colour, channels)
    expected = reference(frames, recipe, rois)
    packed = pack_frames(frames, device)
    for dtype in (torch.float32, torch.float16):
        result = run_poisoned(run, packed, recipe, dtype, rois)
        assert_close(result, expected, dtype, f"{name} {colour} from {channels} channels, {dtype}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["torch", "triton"])
def test_uint16_frames(name: str, device: str) -> None:
    run = implementation(name, device)
    rng = np.random.default_rng(16)
    recipe, frames, rois = random_case(rng, "rgb", 3, np.uint16)
    packed = pack_frames(frames, device)
    assert packed.data.dtype == torch.uint16
    result = run_poisoned(run, packed, recipe, torch.float32, rois)
    assert_close(result, reference(frames, recipe, rois), torch.float32, f"{name} bgr16")


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["torch", "triton", "dispatcher"])
def test_recipe_roi_on_unpacked_frames(name: str, device: str) -> None:
    """The recipe's ROI applies to every frame; frames given as a list (read-only camera buffers, without a
    warning) are packed on the way in."""
    run = implementation(name, device)
    rng = np.random.default_rng(7)
    frames = [make_frame(rng, 60, 90, 3), make_frame(rng, 45, 70, 3)]
    for frame in frames:
        frame.setflags(write=False)
    recipe = PreprocessRecipe(20, 36, "rgb", roi=(5, 3, 40, 30))
    expected = reference(frames, recipe, [recipe.roi] * 2)
    tensors = [torch.from_numpy(frame.copy()).to(device) for frame in frames]
    assert_close(run(frames, recipe, device=device), expected, torch.float32, f"{name} numpy frames")
    assert_close(run(tensors, recipe), expected, torch.float32, f"{name} tensor frames")


def test_tables_are_the_reference_coordinates_and_cached() -> None:
    rng = np.random.default_rng(3)
    frames = [make_frame(rng, 50, 70, 1), make_frame(rng, 30, 20, 1)]
    recipe = PreprocessRecipe(24, 32, "mono", mean=(0.5,), std=(0.5,))
    rois = [(4, 6, 33, 21), None]
    tables = batch_tables(pack_frames(frames), recipe, rois)
    assert tables is batch_tables(pack_frames(frames), recipe, rois)
    assert tables.origin.tolist() == [6 * 70 + 4, 50 * 70]
    assert tables.row_stride.tolist() == [70, 20]
    for index, (in_h, in_w) in enumerate([(21, 33), (30, 20)]):
        for got, want in (
            ((tables.y_lo, tables.y_hi, tables.y_weight), source_coords(in_h, 24)),
            ((tables.x_lo, tables.x_hi, tables.x_weight), source_coords(in_w, 32)),
        ):
            for table, values in zip(got, want, strict=True):
                np.testing.assert_array_equal(table[index].numpy(), values)


@pytest.mark.parametrize("name", ["torch", "triton"])
def test_rejects_what_the_reference_rejects(name: str) -> None:
    run = implementation(name, "cpu")
    rng = np.random.default_rng(5)
    frames = [make_frame(rng, 30, 40, 3), make_frame(rng, 20, 20, 3)]
    recipe = PreprocessRecipe(8, 8, "rgb")
    with pytest.raises(ValueError, match="does not fit"):
        run(frames, recipe, rois=[None, (10, 0, 11, 5)])
    with pytest.raises(ValueError, match="2 frames"):
        run(frames, recipe, rois=[None])
    with pytest.raises(ValueError, match="one pixel format"):
        run([frames[0], frames[1][:, :, :1]], recipe)
    with pytest.raises(ValueError, match="cannot hold"):
        run(frames, recipe, out=torch.empty(1, 3, 8, 8))
    with pytest.raises(ValueError, match="dtype"):
        run(frames, recipe, torch.float16, out=torch.empty(2, 3, 8, 8))


def test_dispatcher_matches_reference_on_cpu() -> None:
    rng = np.random.default_rng(11)
    recipe, frames, rois = random_case(rng, "mono", 3)
    result = preprocess_batch_gpu(frames, recipe, torch.float16, rois=rois)
    assert result.dtype == torch.float16 and result.device.type == "cpu"
    assert_close(result, reference(frames, recipe, rois), torch.float16, "dispatcher")


def test_package_imports_without_torch() -> None:
    """The camera side imports edge_inspect without torch; the kernels package must not need it."""
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['triton'] = None\n"
        "import edge_inspect.kernels as kernels\n"
        "assert not kernels.triton_available()"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


def test_benchmark_helpers() -> None:
    spec = importlib.util.spec_from_file_location("gpu_preprocess", ROOT / "benchmarks" / "gpu_preprocess.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    # 8 frames of 2448x2048 bgr8 read once, 8x3x512x512 float16 written once.
    expected = 8 * 2048 * 2448 * 3 + 8 * 3 * 512 * 512 * 2
    assert bench.preprocess_traffic_bytes(8, 2048, 2448, 3, 3, 512, 2) == expected
    frames = bench.make_frames(2, 40, 56, seed=1)
    assert all(f.shape == (40, 56, 3) and f.dtype == np.uint8 and f.std() > 20 for f in frames)
    assert not np.array_equal(frames[0][..., 0], frames[0][..., 2])
    recipe = PreprocessRecipe(16, 24, "rgb", mean=bench.IMAGENET_MEAN, std=bench.IMAGENET_STD)
    # OpenCV resizes uint8 with fixed-point weights: near the reference, not equal to it.
    error = np.abs(bench.cv2_preprocess(frames, recipe) - reference(frames, recipe, [None, None])).max()
    assert error < 0.05
