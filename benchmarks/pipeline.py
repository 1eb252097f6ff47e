"""Pipeline efficiency and latency of the inspection line on this machine.

    python benchmarks/pipeline.py [--model DIR] [--seconds 20] [--batch 8]

Measures, in one run and with the same model and batch size:
- model_only_fps: ONNX Runtime alone on ready (preprocessed) tensors;
- pipeline_fps:   camera process → ZeroMQ → inspector (validate, queue, batch, decode, preprocess, infer,
                  postprocess, rules, SQLite + archive) in lossless mode with the inspector saturated;
- efficiency:     pipeline_fps / model_only_fps;
- p50_ms, p99_ms: capture-to-result latency with the camera at 10 parts/s.
Throughputs are medians over 2-second windows after a warm-up. Progress goes to stderr; the last line of
stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edge_inspect.demo import free_port, latency_percentiles
from edge_inspect.inspector.config import build_config
from edge_inspect.inspector.infer import load_model
from edge_inspect.inspector.preprocess import preprocess_batch
from edge_inspect.inspector.service import Inspector
from edge_inspect.models.package import load_package
from edge_inspect.sinks.record_store import RecordStore
from edge_inspect.training.datasets import elpv_split

WINDOW_S = 2.0


def say(message: str) -> None:
    print(f"[pipeline-bench] {message}", file=sys.stderr, flush=True)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def model_only_fps(model_dir: Path, batch: int, seconds: float) -> tuple[float, str]:
    import cv2

    package = load_package(model_dir)
    model = load_model(package)
    paths = [s.path for s in elpv_split()["test"][:batch]]
    frames = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in paths]
    inputs = preprocess_batch(frames, package.card.preprocess)
    for _ in range(3):
        model.run(inputs)
    times = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        t0 = time.perf_counter()
        model.run(inputs)
        times.append(time.perf_counter() - t0)
    return batch / float(np.median(times)), model.provider


def camera(bus: str, fps: float) -> subprocess.Popen:
    args = ["camera", "elpv", "--split", "test", "--loop", "--fps", str(fps), "--endpoint", bus]
    return subprocess.Popen(
        [sys.executable, "-m", "edge_inspect", *args, "--camera-id", "bench-cam"], stdout=subprocess.DEVNULL
    )


def pipeline_run(
    model_dir: Path, batch: int, fps: float, seconds: float, workdir: Path
) -> tuple[list[float], list[float]]:
    """Run the line; returns per-window throughputs and every result's capture-to-result latency."""
    bus = f"tcp://127.0.0.1:{free_port()}"
    config = build_config(
        {
            "model": {"package": model_dir},
            "records": {"workdir": workdir},
            "bus": {"bind": bus, "results": None},
            "metrics": {"port": None},
            "batching": {"max_batch": batch},
        }
    )
    inspector = Inspector(config)
    inspector.start()
    cam = camera(bus, fps)
    rates = []
    try:
        time.sleep(min(5.0, seconds / 4))  # warm-up: sessions, caches, socket connection
        t_start_ns = time.time_ns()
        previous = inspector.summary()["inspected"]
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(WINDOW_S)
            current = inspector.summary()["inspected"]
            rates.append((current - previous) / WINDOW_S)
            previous = current
    finally:
        cam.send_signal(signal.SIGTERM)
        cam.wait(timeout=30)
        inspector.stop()
    store = RecordStore(config.db_path)
    try:
        latencies = [r.timings_ms.total for r in store.query(since_ns=t_start_ns, limit=10**9)]
    finally:
        store.close()
    return rates, latencies


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=None, help="model package (default: the demo model)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per phase")
    parser.add_argument("--batch", type=int, default=8, help="batch size for both measurements")
    args = parser.parse_args()
    model_dir = args.model
    if model_dir is None:
        from edge_inspect.training.demo_model import prepare_demo_model

        model_dir = prepare_demo_model(Path("var/demo/model"))
    say(f"model-only throughput, batch {args.batch}, {args.seconds:g} s")
    model_fps, provider = model_only_fps(model_dir, args.batch, args.seconds)
    with tempfile.TemporaryDirectory() as tmp:
        say("pipeline throughput, lossless, camera as fast as the inspector takes frames")
        rates, _ = pipeline_run(model_dir, args.batch, 0, args.seconds, Path(tmp) / "saturated")
        say("latency at 10 parts/s")
        _, latencies = pipeline_run(model_dir, args.batch, 10, args.seconds, Path(tmp) / "paced")
    pipeline_fps = float(np.median(rates))
    p50, p99 = latency_percentiles(latencies)
    card = load_package(model_dir).card
    print(
        json.dumps(
            {
                "model_only_fps": round(model_fps, 2),
                "pipeline_fps": round(pipeline_fps, 2),
                "efficiency": round(pipeline_fps / model_fps, 3),
                "p50_ms": p50,
                "p99_ms": p99,
                "latency_samples": len(latencies),
                "batch": args.batch,
                "model": f"{card.name}:{card.version}",
                "input": f"{card.preprocess.height}x{card.preprocess.width}",
                "provider": provider,
                "cpu": cpu_model(),
                "cores": os.cpu_count(),
                "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
