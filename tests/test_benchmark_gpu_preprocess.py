"""benchmarks/gpu_preprocess.py as CI and a user run it: a subprocess from the repository root whose last
stdout line is one JSON object. On the CPU (smoke mode) every path but the Triton kernel runs; on a GPU the
whole benchmark runs, briefly."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from typing import Any

import pytest
import torch

from benchmarks.gpu_preprocess import IMAGENET_STD
from tests.helpers import ROOT, run_benchmark

# One uint8 level after normalisation, at the smallest std (the largest step).
UINT8_STEP = 1 / 255 / min(IMAGENET_STD)
# Half a float16 rounding step below 4; the benchmark's outputs stay within [-2.2, 2.7].
FLOAT16_HALF_STEP = 2**-10
# The torch reference and the Triton kernel do the reference's float32 arithmetic; only the float16 output
# rounds (FLOAT16_HALF_STEP, plus float32 noise).
TORCH_REFERENCE_BOUND = 1e-3
# torchvision resizes the uint8 image and rounds the result back to uint8: half a level on CUDA (float
# interpolation, one rounding); on the CPU its native uint8 kernel rounds after each of its two separable
# passes (up to one level), with fixed-point weights on top (a fraction of a level). Measured in smoke mode:
# 0.0178, 0.96 of a level plus the float16 step.
TORCHVISION_BOUND = 1.25 * UINT8_STEP + FLOAT16_HALF_STEP
# The folded graph resizes in float32 like the reference, but ONNX Runtime computes its coordinates in
# float32 rather than float64, which moves samples by up to about 1e-4 after normalisation. Measured in
# smoke mode: 0.00097, the float16 step alone.
FOLDED_BOUND = FLOAT16_HALF_STEP + 2e-4
# OpenCV's uint8 resize uses fixed-point weights (the same bound as tests/test_kernels.py).
CV2_BOUND = 0.05
# Timed on every device (the Triton kernel only on CUDA).
TIMED_EVERYWHERE = ("torch_reference", "torchvision_ops", "numpy_reference", "cv2")


def assert_timed(value: Any, label: str) -> None:
    assert isinstance(value, float) and math.isfinite(value) and value > 0, f"{label} is {value!r}"


def assert_errors_within_bounds(errors: dict[str, float]) -> None:
    """Every path in `errors` against its bound vs the numpy reference."""
    bounds = {
        "triton": TORCH_REFERENCE_BOUND,
        "torch_reference": TORCH_REFERENCE_BOUND,
        "torchvision_ops": TORCHVISION_BOUND,
        "onnx_folded": FOLDED_BOUND,
        "cv2": CV2_BOUND,
    }
    for name, error in errors.items():
        assert error <= bounds[name], f"{name}: max abs error {error:.3g} vs numpy over {bounds[name]:.3g}"


@pytest.mark.slow
def test_smoke_mode_on_cpu_runs_every_path_but_triton() -> None:
    result = run_benchmark("benchmarks.gpu_preprocess", "--device", "cpu", "--smoke", timeout=240)
    preprocess = result["preprocess"]
    assert result["smoke"] is True
    assert preprocess["output"] == "2x3x128x128 float16"
    for name in TIMED_EVERYWHERE:
        assert_timed(preprocess[f"{name}_ms"], f"{name}_ms")
    folded = preprocess["onnx_folded"]
    assert folded.get("provider") == "CPUExecutionProvider", f"the folded graph did not run: {folded}"
    assert_timed(folded["ms"], "onnx_folded.ms")
    errors = preprocess["max_abs_error_vs_numpy"]
    assert set(errors) == {"torch_reference", "torchvision_ops", "onnx_folded", "cv2"}
    assert_errors_within_bounds(errors)
    # Without the fused kernel there is nothing to compare against: no figure rather than a made-up one.
    assert "triton_ms" not in preprocess and "copy_GBps" not in result
    speedups = [key for key in preprocess if key.startswith("speedup_vs_")]
    assert sorted(speedups) == [
        "speedup_vs_cv2",
        "speedup_vs_onnx_folded",
        "speedup_vs_torch_reference",
        "speedup_vs_torchvision_ops",
    ]
    assert all(preprocess[key] is None for key in speedups)
    assert preprocess["targets"] == {"bandwidth_fraction_0_7": None, "speedup_5x_vs_separate_ops": None}


@pytest.mark.slow
def test_gpu_mode_refuses_clearly_without_a_gpu_or_with_the_interpreter() -> None:
    env = dict(os.environ, TRITON_INTERPRET="1")
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_preprocess", "--repeats", "3"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode != 0 and completed.stdout == ""
    assert "unset TRITON_INTERPRET" in completed.stderr
    assert "--device cpu --smoke" in completed.stderr


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.timeout(600)
def test_gpu_mode_runs_briefly() -> None:
    result = run_benchmark("benchmarks.gpu_preprocess", "--repeats", "3", "--cpu-repeats", "1", timeout=540)
    preprocess = result["preprocess"]
    assert result["smoke"] is False and result["copy_GBps"] > 0 and result["matmul_fp16_TFLOPs"] > 0
    assert preprocess["output"] == "8x3x512x512 float16"
    for name in ("triton", *TIMED_EVERYWHERE):
        assert_timed(preprocess[f"{name}_ms"], f"{name}_ms")
    errors = preprocess["max_abs_error_vs_numpy"]
    assert_errors_within_bounds(errors)
    import onnxruntime as ort

    folded = preprocess["onnx_folded"]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert folded.get("provider") == "CUDAExecutionProvider", f"the folded graph did not run: {folded}"
        assert_timed(folded["ms"], "onnx_folded.ms")
        assert "onnx_folded" in errors
    else:
        assert "skipped" in folded and "onnx_folded" not in errors
    for key in ("speedup_vs_torchvision_ops", "speedup_vs_torch_reference", "speedup_vs_cv2"):
        assert preprocess[key] > 0, f"{key} is {preprocess[key]!r}"
    assert all(isinstance(met, bool) for met in preprocess["targets"].values()), preprocess["targets"]
