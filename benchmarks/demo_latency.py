"""Capture-to-verdict latency of the demo line, stage by stage.

    python benchmarks/demo_latency.py [--workdir var/demo] [--seconds 60] [--fps 10]

Runs `edge-inspect demo --json` (camera replaying ELPV at `--fps`, inspector, alarm view) for `--seconds`,
then reads every result of the run from the inspector's records DB and reports the median of each stage
of `timings_ms` (transport, queue, decode, preprocess, infer, postprocess, total), p50/p90/p99 of the total
and the batch-1 inference time of the model alone (ONNX Runtime with the inspector's session options, on
ready tensors), which the latency target is stated against. It reads the DB with sqlite3 and the model
with onnxruntime only, so it measures any checkout of the package the same way (set PYTHONPATH to it).
The load average before and after is reported: the machine may be shared. Progress goes to stderr; the
last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

STAGES = ("transport", "queue", "decode", "preprocess", "infer", "postprocess", "total")


def say(message: str) -> None:
    print(f"[demo-latency] {message}", file=sys.stderr, flush=True)


def model_batch1_ms(model_dir: Path, seconds: float = 5.0) -> float:
    """Median time of one batch-1 run of the package's ONNX graph on the CPU, the inspector's way."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(model_dir / "model.onnx"), options, providers=["CPUExecutionProvider"])
    spec = session.get_inputs()[0]
    shape = [1, *(int(d) for d in spec.shape[1:])]
    batch = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    for _ in range(5):
        session.run(None, {spec.name: batch})
    times = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        t0 = time.perf_counter()
        session.run(None, {spec.name: batch})
        times.append((time.perf_counter() - t0) * 1e3)
        time.sleep(0.05)  # as at 10 parts/s: the model's threads go idle between parts
    return float(np.median(times))


def run_demo(workdir: Path, seconds: float, fps: float) -> dict:
    command = [sys.executable, "-m", "edge_inspect", "demo", "--workdir", str(workdir)]
    command += ["--seconds", str(seconds), "--fps", str(fps), "--json"]
    completed = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])


def stage_timings(db: Path, since_ns: int) -> list[dict[str, float]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT result_json FROM results WHERE t_capture_ns >= ? ORDER BY t_capture_ns", (since_ns,)
        ).fetchall()
    return [json.loads(row[0])["timings_ms"] for row in rows]


def summarise(timings: list[dict[str, float]]) -> dict[str, object]:
    medians = {stage: round(float(np.median([t[stage] for t in timings])), 2) for stage in STAGES}
    p50, p90, p99 = np.percentile([t["total"] for t in timings], [50, 90, 99])
    return {
        "median_ms": medians,
        "p50_ms": round(float(p50), 2),
        "p90_ms": round(float(p90), 2),
        "p99_ms": round(float(p99), 2),
        "samples": len(timings),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", type=Path, default=Path("var/demo"), help="the demo's workdir")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the line runs")
    parser.add_argument("--fps", type=float, default=10.0, help="parts per second")
    parser.add_argument("--skip-model", action="store_true", help="do not time the model alone")
    args = parser.parse_args()
    import edge_inspect

    say(f"package: {edge_inspect.__file__}")
    load_before = os.getloadavg()
    t_start_ns = time.time_ns()
    say(f"demo line, {args.fps:g} parts/s for {args.seconds:g} s (load {load_before[0]:.2f})")
    demo = run_demo(args.workdir, args.seconds, args.fps)
    load_after = os.getloadavg()
    timings = stage_timings(Path(demo["records_db"]), t_start_ns)
    if not timings:
        raise SystemExit("the run recorded no results")
    report: dict[str, object] = summarise(timings)
    if not args.skip_model:
        say("the model alone, batch 1")
        report["model_batch1_ms"] = round(model_batch1_ms(Path(demo["model"])), 2)
    report.update(
        {
            "fps": args.fps,
            "seconds": args.seconds,
            "inspected": demo["inspected"],
            "dropped": demo["dropped"],
            "load_before": [round(x, 2) for x in load_before],
            "load_after": [round(x, 2) for x in load_after],
            "package": str(Path(edge_inspect.__file__).parent),
        }
    )
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
