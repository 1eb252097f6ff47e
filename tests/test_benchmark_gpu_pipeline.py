"""benchmarks/gpu_pipeline.py as CI and an integrator run it: a subprocess from the repository root whose last
stdout line is one JSON object. Without a GPU the smoke mode runs the whole line (camera processes, ZeroMQ,
the inspector's device frame path on CPU tensors) with the toy model; on a GPU the default runs briefly."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from benchmarks.gpu_pipeline import stream_density
from tests.helpers import ROOT, run_benchmark

TOP_LEVEL_KEYS = {
    "device",
    "runtime",
    "frame",
    "model",
    "cameras",
    "model_only_fps",
    "pipeline_fps",
    "efficiency",
    "stream_density",
    "targets",
    "repeats",
}
CAMERA_KEYS = {"fps", "p50_ms", "p99_ms", "dropped"}


def assert_line_figures(result: dict[str, Any], counts: list[int], fps_per_camera: float) -> None:
    """Every key present; at each camera count every frame judged and the latencies positive and ordered."""
    assert set(result) >= TOP_LEVEL_KEYS, f"missing keys: {TOP_LEVEL_KEYS - set(result)}"
    assert set(result["targets"]) == {"p99_under_20ms_at_16", "efficiency_0_9"}
    assert sorted(int(n) for n in result["cameras"]) == counts
    for count, entry in result["cameras"].items():
        assert set(entry) >= CAMERA_KEYS, f"{count} cameras: missing {CAMERA_KEYS - set(entry)}"
        assert entry["dropped"] == 0, f"{count} cameras lost frames: {entry['dropped_by']}"
        # A frame either side of the window's edges per camera, and a busy CI machine: not an exact rate.
        assert entry["fps"] >= 0.75 * int(count) * fps_per_camera, f"{count} cameras: {entry}"
        assert 0 < entry["p50_ms"] <= entry["p99_ms"], f"{count} cameras: {entry}"
    for key in ("model_only_fps", "pipeline_fps", "efficiency"):
        value = result[key]
        assert isinstance(value, float) and math.isfinite(value) and value > 0, f"{key} is {value!r}"
    assert isinstance(result["stream_density"], int) and result["stream_density"] >= 0
    assert isinstance(result["targets"]["efficiency_0_9"], bool)


def line(p99_ms: float, dropped: int = 0) -> dict[str, Any]:
    return {"p99_ms": p99_ms, "dropped": dropped}


def capacity_line(capacity: int, probed: list[int]) -> Any:
    """A measurement of a line that holds up to `capacity` cameras, recording the counts it is asked for."""

    def measure(count: int) -> dict[str, Any]:
        probed.append(count)
        return line(10.0) if count <= capacity else line(35.0)

    return measure


def test_stream_density_starts_from_the_measured_counts_then_bisects() -> None:
    probed: list[int] = []
    known = {1: line(5.0), 4: line(8.0), 16: line(25.0)}
    density, probes = stream_density(capacity_line(11, probed), known, 20.0, 32)
    assert density == 11 and probed == [10, 13, 11, 12] and set(probes) == set(probed)


def test_stream_density_doubles_up_to_the_limit() -> None:
    probed: list[int] = []
    density, _ = stream_density(capacity_line(100, probed), {1: line(5.0), 4: line(8.0)}, 20.0, 20)
    assert density == 20 and probed == [8, 16, 20]
    probed.clear()
    density, _ = stream_density(capacity_line(5, probed), {1: line(5.0), 4: line(8.0)}, 20.0, 20)
    assert density == 5 and probed == [8, 6, 5]


def test_stream_density_counts_dropped_frames_as_not_held() -> None:
    probed: list[int] = []
    density, probes = stream_density(capacity_line(8, probed), {1: line(5.0, dropped=1)}, 20.0, 32)
    assert density == 0 and probed == [] and probes == {}


@pytest.mark.slow
def test_smoke_mode_on_cpu_judges_every_frame(toy_model_dir: Path) -> None:
    # A generous latency budget: the density search then probes a count of its own (4, the smoke limit).
    smoke = ("--device", "cpu", "--smoke", "--model", str(toy_model_dir), "--p99-budget-ms", "1000")
    result = run_benchmark("benchmarks.gpu_pipeline", *smoke, timeout=120)
    assert result["smoke"] is True and result["device"].startswith("cpu")
    assert result["frame"] == "306x256x3 uint8 raw" and result["model"] == "toy-brightness:1"
    assert_line_figures(result, [1, 2], 10.0)
    # The toy model judges the synthetic parts OK, so the cameras send only such parts.
    assert result["frame_pool"] == {"frames": 8, "judged_ok": 8}
    # 16 cameras are not measured in smoke mode: the latency target is not judged.
    assert result["targets"]["p99_under_20ms_at_16"] is None
    assert result["stream_density"] == 4 and result["density"]["capped"] is True
    probe = result["density"]["probes"]["4"]
    assert probe["dropped"] == 0 and 0 < probe["p50_ms"] <= probe["p99_ms"] <= 1000


@pytest.mark.slow
def test_gpu_mode_refuses_clearly_without_a_gpu() -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_pipeline", "--model", "does-not-matter"],
        cwd=ROOT,
        env={name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode != 0 and completed.stdout == ""
    assert "needs a CUDA GPU" in completed.stderr and "--device cpu --smoke" in completed.stderr


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.timeout(900)
def test_gpu_mode_runs_the_default_briefly() -> None:
    # The default model is trained on first use (a few minutes), then cached under var/bench/.
    brief = ("--cameras", "1,4", "--max-cameras", "8", "--repeats", "1", "--seconds", "5", "--warmup", "3")
    result = run_benchmark("benchmarks.gpu_pipeline", *brief, timeout=840)
    assert result["smoke"] is False and result["frame"] == "2448x2048x3 uint8 raw"
    assert_line_figures(result, [1, 4], 10.0)
    assert result["frame_pool"]["judged_ok"] == result["frame_pool"]["frames"]
    assert result["targets"]["p99_under_20ms_at_16"] is None
