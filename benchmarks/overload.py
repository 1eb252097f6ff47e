"""Overload: 3x the sustainable frame rate for minutes, then recovery, on loopback.

    python -m benchmarks.overload [--minutes 10] [--toy] [--smoke]

Processes, as a line runs them: one inspector (`edge-inspect serve`) and camera gateways
(`edge-inspect camera synthetic`), all on this machine.

1. sustainable rate R: one lossless camera at `--fps 0` (as fast as the inspector takes frames);
   then the baseline latency, capture to verdict, at 0.5 R.
2. overload: `--cameras` cameras, half lossless and half latest, together offering 3 R; every
   `--sample-s` the inspector's resident memory (VmRSS, and the kernel's peak VmHWM), its /metrics counters
   (received, inspected, dropped by reason, malformed) and queue depth.
3. recovery: the same mix at 0.5 R; how many seconds after the overload ended the p50 latency (1-second
   bins by capture time) is back within 1.5x the baseline and stays there.

Checks: peak RSS under a ceiling derived from the queues' byte budget (model and runtime as measured after
a warm-up + budget + frames in flight outside the queues + a fixed allowance); every frame accounted for,
per camera; the lossless cameras back-pressured; latency recovered. Each camera has its own id per phase,
so its frames are counted apart. Progress on stderr; the last stdout line is one JSON object.
`--smoke` (toy model, tiny frames, 12 s overload, 6 s recovery) checks the machinery in about 40 s.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from edge_inspect.demo import free_port

MIB = 1024 * 1024
# Beyond the queues' budget and the model: Python objects, SQLite's cache, the batches being prepared,
# inferred and recorded (decoded frames and their archive copies), allocator slack.
FIXED_ALLOWANCE_MB = 256
# Frames that can sit outside the queues per camera: ZeroMQ's receive high-water mark (4) and what the
# kernel's socket buffers hold, rounded up.
IN_FLIGHT_FRAMES_PER_CAMERA = 8
RECOVERY_FACTOR = 1.5
INSPECTOR_DROPS = ("superseded", "memory_budget")


def say(message: str) -> None:
    print(f"[overload] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Plan:
    """Phase lengths (s) and the line's shape; `--smoke` shrinks every phase."""

    warmup_s: float
    rate_s: float
    baseline_s: float
    overload_s: float
    recovery_s: float
    sample_s: float
    cameras: int
    width: int
    height: int
    toy: bool
    queue_depth: int
    max_queued_mb: float | None
    model: Path | None


def parse_args(argv: Sequence[str] | None) -> Plan:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="overload length (default 10)")
    parser.add_argument("--recovery-s", type=float, default=60.0, help="recovery phase length (default 60)")
    parser.add_argument(
        "--rate-s", type=float, default=20.0, help="sustainable-rate measurement (default 20)"
    )
    parser.add_argument("--sample-s", type=float, default=5.0, help="seconds between samples (default 5)")
    parser.add_argument("--cameras", type=int, default=4, help="overload cameras, half lossless (default 4)")
    parser.add_argument("--width", type=int, default=640, help="frame width (default 640)")
    parser.add_argument("--height", type=int, default=480, help="frame height (default 480)")
    parser.add_argument("--toy", action="store_true", help="the tests' toy model instead of the demo model")
    parser.add_argument("--model", type=Path, default=None, help="a model package to serve instead")
    # A deep queue so that the byte budget, not the frame count, is what bounds the queues.
    parser.add_argument("--queue-depth", type=int, default=1000, help="inspector queue depth (default 1000)")
    parser.add_argument(
        "--max-queued-mb", type=float, default=None, help="inspector byte budget (default: its own, 512)"
    )
    parser.add_argument("--smoke", action="store_true", help="toy model, tiny frames, 12 s + 6 s")
    args = parser.parse_args(argv)
    if args.cameras < 2 or args.cameras % 2:
        parser.error("--cameras must be even and at least 2: half lossless, half latest")
    if args.smoke:
        return Plan(2, 4, 4, 12, 6, 2, args.cameras, 64, 48, True, args.queue_depth, args.max_queued_mb, None)
    return Plan(
        *(5.0, args.rate_s, 20.0, args.minutes * 60, args.recovery_s, args.sample_s, args.cameras),
        *(args.width, args.height, args.toy, args.queue_depth, args.max_queued_mb, args.model),
    )


def model_package(plan: Plan, scratch: Path) -> Path:
    if plan.model is not None:
        return plan.model
    if plan.toy:
        from tests.toy_models import make_toy_package

        return make_toy_package(scratch / "toy-model")
    from edge_inspect.training.demo_model import prepare_demo_model

    say("demo model: var/demo/model (prepared now unless it is there)")
    return prepare_demo_model(Path("var/demo/model"))


def edge_inspect(*args: str, stdout: Any = subprocess.PIPE, stderr: Any = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "edge_inspect", *args], stdout=stdout, stderr=stderr, text=True, env=env
    )


def last_json_line(proc: subprocess.Popen, timeout_s: float) -> dict[str, Any]:
    """SIGTERM the process and return the JSON object on the last line of its stdout."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=timeout_s)
    lines = (out or "").strip().splitlines()
    if not lines:
        raise RuntimeError(f"process {proc.args} exited {proc.returncode} without a JSON summary")
    return json.loads(lines[-1])


class InspectorProcess:
    """`edge-inspect serve` on a free loopback port, with /metrics on another."""

    def __init__(self, model: Path, workdir: Path, plan: Plan, log: Path) -> None:
        self.metrics_port = free_port()
        args = [
            *("serve", "--model", str(model), "--workdir", str(workdir), "--bind", "tcp://127.0.0.1:*"),
            *("--results", "", "--metrics-port", str(self.metrics_port), "--frame-path", "host"),
            *("--queue-depth", str(plan.queue_depth)),
        ]
        if plan.max_queued_mb is not None:
            args += ["--max-queued-mb", str(plan.max_queued_mb)]
        self._log = log.open("w")
        self.proc = edge_inspect(*args, stderr=self._log)
        assert self.proc.stdout is not None
        ready = json.loads(self.proc.stdout.readline() or "{}")
        if ready.get("event") != "ready":
            raise RuntimeError(f"the inspector did not start; see {log}")
        self.bind: str = ready["bind"]
        self.workdir = workdir

    def memory_kib(self) -> tuple[int, int]:
        """(VmRSS, VmHWM) in KiB: resident now, and the kernel's record of the peak."""
        fields = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0])
        return fields["VmRSS"], fields["VmHWM"]

    def scrape(self) -> Counts:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as reply:
            return parse_metrics(reply.read().decode())

    def stop(self) -> dict[str, Any]:
        try:
            return last_json_line(self.proc, timeout_s=120)
        finally:
            self._log.close()


@dataclass
class Counts:
    """The inspector's /metrics counters, per camera."""

    received: dict[str, int] = field(default_factory=dict)
    inspected: dict[str, int] = field(default_factory=dict)
    dropped: dict[tuple[str, str], int] = field(default_factory=dict)  # (camera, reason)
    malformed: int = 0

    @property
    def backlog(self) -> int:
        """Frames received and not yet settled: queued, or in prepare/infer/record. (The queue-depth gauge
        is set when a frame is queued, not when one is taken, so it goes stale when a camera stops.)"""
        settled = self.total("inspected") + sum(
            n for (_, reason), n in self.dropped.items() if reason in INSPECTOR_DROPS
        )
        return self.total("received") - settled - self.malformed

    def total(self, what: str, cameras: Sequence[str] | None = None) -> int:
        table: dict[str, int] = getattr(self, what)
        return sum(n for camera, n in table.items() if cameras is None or camera in cameras)

    def drops(self, camera: str) -> dict[str, int]:
        return {reason: n for (cam, reason), n in self.dropped.items() if cam == camera}

    def drops_by_reason(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for (_, reason), n in self.dropped.items():
            out[reason] = out.get(reason, 0) + n
        return out


def parse_metrics(text: str) -> Counts:
    counts = Counts()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels, value = sample.labels, int(sample.value)
            if sample.name == "edgeinspect_frames_received_total":
                counts.received[labels["camera"]] = value
            elif sample.name == "edgeinspect_frames_inspected_total":
                camera = labels["camera"]
                counts.inspected[camera] = counts.inspected.get(camera, 0) + value
            elif sample.name == "edgeinspect_frames_dropped_total":
                counts.dropped[labels["camera"], labels["reason"]] = value
            elif sample.name == "edgeinspect_malformed_messages_total":
                counts.malformed += value
    return counts


@dataclass
class Camera:
    camera_id: str
    delivery: str
    fps: float
    proc: subprocess.Popen
    stats: dict[str, Any] = field(default_factory=dict)


def start_camera(line: InspectorProcess, plan: Plan, camera_id: str, delivery: str, fps: float) -> Camera:
    proc = edge_inspect(
        *("camera", "synthetic", "--endpoint", line.bind, "--camera-id", camera_id),
        *("--fps", f"{fps:.3f}", "--delivery", delivery, "--width", str(plan.width)),
        *("--height", str(plan.height), "--seed", str(abs(hash(camera_id)) % 1000)),
        stderr=subprocess.DEVNULL,
    )
    return Camera(camera_id, delivery, fps, proc)


def stop_cameras(cameras: Sequence[Camera]) -> None:
    for camera in cameras:
        if camera.proc.poll() is None:
            camera.proc.send_signal(signal.SIGTERM)
    for camera in cameras:
        camera.stats = last_json_line(camera.proc, timeout_s=60)


def wait_for(line: InspectorProcess, condition: Any, timeout_s: float, what: str) -> Counts:
    deadline = time.monotonic() + timeout_s
    while True:
        counts = line.scrape()
        if condition(counts):
            return counts
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s} s waiting for {what}; last counts {counts}")
        time.sleep(0.2)


def drained(counts: Counts) -> bool:
    """Everything received has been inspected, dropped or refused."""
    return counts.backlog <= 0


def stable_drain(line: InspectorProcess, timeout_s: float = 120) -> Counts:
    """Wait until the inspector has settled every frame it received, twice a second apart (late messages
    still in ZeroMQ's buffers would raise `received` in between)."""
    first = wait_for(line, drained, timeout_s, "the inspector to drain its queues")
    time.sleep(1.0)
    second = wait_for(line, drained, timeout_s, "the inspector to drain its queues")
    return second if second.total("received") == first.total("received") else stable_drain(line, timeout_s)


@dataclass
class Sample:
    t_s: float
    phase: str
    rss_mib: float
    hwm_mib: float
    counts: Counts

    def row(self) -> list[Any]:
        c = self.counts
        drops = c.drops_by_reason()
        return [
            round(self.t_s, 1),
            self.phase,
            round(self.rss_mib, 1),
            c.backlog,
            c.total("received"),
            c.total("inspected"),
            *(drops.get(reason, 0) for reason in ("superseded", "memory_budget", "seq_gap")),
        ]


SAMPLE_COLUMNS = [
    *("t_s", "phase", "rss_mib", "backlog", "received", "inspected"),
    *("superseded", "memory_budget", "seq_gap"),
]


def sample(line: InspectorProcess, phase: str, t0: float) -> Sample:
    rss, hwm = line.memory_kib()
    return Sample(time.monotonic() - t0, phase, rss / 1024, hwm / 1024, line.scrape())


def sample_for(line: InspectorProcess, plan: Plan, phase: str, seconds: float, t0: float) -> list[Sample]:
    samples = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(plan.sample_s, left))
        samples.append(sample(line, phase, t0))
        s = samples[-1]
        say(
            f"{phase} t={s.t_s:6.1f}s rss={s.rss_mib:7.1f} MiB backlog={s.counts.backlog:4d} "
            f"inspected={s.counts.total('inspected')} dropped={s.counts.drops_by_reason()}"
        )
    return samples


def sustainable_rate(line: InspectorProcess, plan: Plan) -> float:
    """Parts per second the line inspects with one lossless camera sending as fast as it can."""
    camera = start_camera(line, plan, "rate-0", "lossless", 0)
    wait_for(line, lambda c: c.received.get("rate-0", 0) > 0, 60, "the first frame")
    time.sleep(plan.warmup_s)
    before, t0 = line.scrape().total("inspected"), time.monotonic()
    time.sleep(plan.rate_s)
    after, t1 = line.scrape().total("inspected"), time.monotonic()
    stop_cameras([camera])
    stable_drain(line)
    return (after - before) / (t1 - t0)


def run_phase_cameras(line: InspectorProcess, plan: Plan, prefix: str, total_fps: float) -> list[Camera]:
    """Half the cameras lossless, half latest, sharing `total_fps` evenly."""
    fps = total_fps / plan.cameras
    half = plan.cameras // 2
    return [start_camera(line, plan, f"{prefix}-ll-{i}", "lossless", fps) for i in range(half)] + [
        start_camera(line, plan, f"{prefix}-lt-{i}", "latest", fps) for i in range(half)
    ]


def results_by_camera(db: Path) -> dict[str, list[tuple[int, float]]]:
    """(capture time in ns, capture-to-verdict ms) of every recorded result, per camera."""
    out: dict[str, list[tuple[int, float]]] = {}
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute(
            "SELECT camera_id, t_capture_ns, json_extract(result_json, '$.timings_ms.total') FROM results"
        )
        for camera, t_ns, total_ms in rows:
            out.setdefault(camera, []).append((int(t_ns), float(total_ms)))
    return out


def p50(values: Sequence[float]) -> float | None:
    return round(float(np.median(values)), 2) if len(values) else None


def latency_by_second(points: Sequence[tuple[float, float]], bin_s: float = 1.0) -> list[tuple[float, float]]:
    """(bin start s, p50 ms) of (offset s, latency ms) points in `bin_s` bins; empty bins left out."""
    bins: dict[int, list[float]] = {}
    for offset_s, latency_ms in points:
        bins.setdefault(int(offset_s // bin_s), []).append(latency_ms)
    return [(index * bin_s, float(np.median(bins[index]))) for index in sorted(bins)]


def recovery_seconds(binned: Sequence[tuple[float, float]], limit_ms: float) -> float | None:
    """The start of the first bin from which every bin's p50 is within `limit_ms`; None if the last is not.

    Pure, so the rule is a unit test: a single fast bin amid slow ones is not a recovery."""
    recovered_at = None
    for start_s, p50_ms in binned:
        if p50_ms > limit_ms:
            recovered_at = None
        elif recovered_at is None:
            recovered_at = start_s
    return recovered_at


def account(camera: Camera, counts: Counts, inspected: int) -> dict[str, Any]:
    """One camera's frames, end to end. `unaccounted`: sent and never received by the inspector;
    `unsettled`: received and neither inspected nor dropped (both must be 0). The inspector's `seq_gap`
    counts the camera's own drops again (as gaps in its sequence numbers), so it is reported, not added."""
    stats, drops = camera.stats, counts.drops(camera.camera_id)
    received = counts.received.get(camera.camera_id, 0)
    inspector_dropped = sum(drops.get(reason, 0) for reason in INSPECTOR_DROPS)
    return {
        "camera_id": camera.camera_id,
        "delivery": camera.delivery,
        "fps": round(camera.fps, 2),
        "captured": stats["captured"],
        "sent": stats["sent"],
        "camera_dropped": stats["dropped"],
        "received": received,
        "inspected": inspected,
        **{reason: drops.get(reason, 0) for reason in (*INSPECTOR_DROPS, "seq_gap")},
        "unaccounted": stats["captured"] - stats["dropped"] - received,
        "unsettled": received - inspected - inspector_dropped,
        "backpressure_events": stats["backpressure_events"],
        "backpressure_seconds": stats["backpressure_seconds"],
        "achieved_fps": stats.get("achieved_fps"),
    }


def accounting_checks(rows: Sequence[dict[str, Any]]) -> dict[str, bool]:
    lossless = [row for row in rows if row["delivery"] == "lossless"]
    return {
        "all_frames_accounted": all(row["unaccounted"] == 0 and row["unsettled"] == 0 for row in rows),
        "lossless_never_dropped_by_inspector": all(
            row["superseded"] + row["memory_budget"] == 0 for row in lossless
        ),
        # A lossless camera loses a frame only when it is stopped in the middle of a blocked send.
        "lossless_inspected_all_but_abandoned_at_stop": all(
            row["inspected"] == row["captured"] - row["camera_dropped"] and row["camera_dropped"] <= 1
            for row in lossless
        ),
    }


@dataclass
class Run:
    """What the phases measured, for `report`."""

    rate_fps: float = 0.0
    model_rss_mib: float = 0.0
    t_end_ns: int = 0  # when the overload cameras were stopped
    t_end_s: float = 0.0  # the same, on the samples' clock
    cameras: list[Camera] = field(default_factory=list)  # overload and recovery cameras
    samples: list[Sample] = field(default_factory=list)
    final: Counts = field(default_factory=Counts)
    summary: dict[str, Any] = field(default_factory=dict)
    load_before: float = 0.0


def run_line(line: InspectorProcess, plan: Plan) -> Run:
    run = Run(load_before=os.getloadavg()[0])
    say(f"warm-up: one lossless camera at 10 fps, {plan.warmup_s:g} s")
    warm = start_camera(line, plan, "warm-0", "lossless", 10)
    time.sleep(plan.warmup_s + 1)
    stop_cameras([warm])
    stable_drain(line)
    run.model_rss_mib = line.memory_kib()[0] / 1024
    say(f"model and runtime resident: {run.model_rss_mib:.1f} MiB; measuring the sustainable rate")
    run.rate_fps = sustainable_rate(line, plan)
    say(f"sustainable rate R = {run.rate_fps:.1f} parts/s; baseline latency at 0.5 R")
    base = start_camera(line, plan, "base-0", "lossless", 0.5 * run.rate_fps)
    time.sleep(plan.baseline_s)
    stop_cameras([base])
    stable_drain(line)
    t0 = time.monotonic()
    say(f"overload: {plan.cameras} cameras at {3 * run.rate_fps:.1f} parts/s for {plan.overload_s:g} s")
    overload = run_phase_cameras(line, plan, "over", 3 * run.rate_fps)
    run.samples += sample_for(line, plan, "overload", plan.overload_s, t0)
    recovery = run_phase_cameras(line, plan, "rec", 0.5 * run.rate_fps)
    wait_for(line, lambda c: all(c.received.get(cam.camera_id, 0) for cam in recovery), 60, "recovery")
    run.t_end_ns, run.t_end_s = time.time_ns(), time.monotonic() - t0
    stop_cameras(overload)
    say(f"recovery: 0.5 R for {plan.recovery_s:g} s")
    run.samples += sample_for(line, plan, "recovery", plan.recovery_s, t0)
    stop_cameras(recovery)
    run.final = stable_drain(line)
    run.samples.append(sample(line, "drained", t0))
    run.cameras = overload + recovery
    run.summary = line.stop()
    return run


def rss_ceiling_mib(plan: Plan, model_rss_mib: float, frame_bytes: int) -> tuple[float, str]:
    budget_mib = 512.0 if plan.max_queued_mb is None else plan.max_queued_mb
    in_flight_mib = 2 * plan.cameras * IN_FLIGHT_FRAMES_PER_CAMERA * frame_bytes / MIB
    ceiling = model_rss_mib + budget_mib + in_flight_mib + FIXED_ALLOWANCE_MB
    formula = (
        f"model+runtime after warm-up {model_rss_mib:.0f} + queue budget {budget_mib:.0f} + frames in "
        f"flight outside the queues ({2 * plan.cameras} cameras x {IN_FLIGHT_FRAMES_PER_CAMERA} x "
        f"{frame_bytes / MIB:.2f}) {in_flight_mib:.0f} + allowance {FIXED_ALLOWANCE_MB} MiB"
    )
    return round(ceiling, 1), formula


def latency_figures(run: Run, results: dict[str, list[tuple[int, float]]]) -> dict[str, Any]:
    baseline = p50([ms for _, ms in results.get("base-0", [])])
    limit = None if baseline is None else round(RECOVERY_FACTOR * baseline, 2)

    def overload_p50(delivery: str) -> float | None:
        tag = "-ll-" if delivery == "lossless" else "-lt-"
        cams = [c.camera_id for c in run.cameras if c.camera_id.startswith("over") and tag in c.camera_id]
        return p50([ms for cam in cams for _, ms in results.get(cam, [])])

    points = [
        ((t_ns - run.t_end_ns) / 1e9, ms)
        for cam in (c.camera_id for c in run.cameras if c.camera_id.startswith("rec"))
        for t_ns, ms in results.get(cam, [])
        if t_ns >= run.t_end_ns
    ]
    binned = latency_by_second(points)
    return {
        "baseline_p50_ms": baseline,
        "overload_p50_ms": {"lossless": overload_p50("lossless"), "latest": overload_p50("latest")},
        "recovery_limit_ms": limit,
        "recovery_s": None if limit is None else recovery_seconds(binned, limit),
        "recovery_p50_ms_by_second": [[start, round(ms, 1)] for start, ms in binned],
    }


def report_checks(rows: Sequence[dict[str, Any]], latency: dict[str, Any]) -> dict[str, bool]:
    lossless = [r for r in rows if r["delivery"] == "lossless" and r["camera_id"].startswith("over")]
    latest = [r for r in rows if r["delivery"] == "latest"]
    return {
        **accounting_checks(rows),
        "lossless_backpressured": all(r["backpressure_seconds"] > 0 for r in lossless),
        "latest_never_waited": all(r["backpressure_events"] == 0 for r in latest),
        "latency_recovered": latency["recovery_s"] is not None,
    }


def report(run: Run, plan: Plan, db: Path, model: Path) -> dict[str, Any]:
    results = results_by_camera(db)
    rows = [account(c, run.final, len(results.get(c.camera_id, []))) for c in run.cameras]
    frame_bytes = plan.width * plan.height * 3
    ceiling, formula = rss_ceiling_mib(plan, run.model_rss_mib, frame_bytes)
    overload_samples = [s for s in run.samples if s.phase == "overload"]
    rss_max = max(s.rss_mib for s in run.samples)
    peak = max(s.hwm_mib for s in run.samples)
    latency = latency_figures(run, results)
    checks = {"rss_peak_under_ceiling": peak <= ceiling, **report_checks(rows, latency)}
    # When the overload's backlog was worked off (sampled, so to within --sample-s): what recovery waits for.
    cleared = [s.t_s for s in run.samples if s.t_s > run.t_end_s and s.counts.backlog <= plan.cameras]
    lossless = [r for r in rows if r["delivery"] == "lossless" and r["camera_id"].startswith("over")]
    span = overload_samples[-1].t_s - overload_samples[0].t_s if len(overload_samples) > 1 else 0
    inspected_rate = (
        (overload_samples[-1].counts.total("inspected") - overload_samples[0].counts.total("inspected"))
        / span
        if span
        else None
    )
    return {
        "model": run.summary.get("model"),
        "frame": f"{plan.width}x{plan.height}x3",
        "cameras": plan.cameras,
        "queue_depth": plan.queue_depth,
        "max_queued_mb": 512.0 if plan.max_queued_mb is None else plan.max_queued_mb,
        "overload_s": plan.overload_s,
        "sustainable_fps": round(run.rate_fps, 1),
        "offered_fps": round(3 * run.rate_fps, 1),
        "overload_inspected_fps": None if inspected_rate is None else round(inspected_rate, 1),
        "rss_mib": {
            "model_after_warmup": round(run.model_rss_mib, 1),
            "max_sampled": round(rss_max, 1),
            "peak_vmhwm": round(peak, 1),
            "ceiling": ceiling,
            "ceiling_formula": formula,
        },
        "dropped_by_reason": run.summary.get("dropped_by_reason"),
        "malformed": run.summary.get("malformed"),
        "camera_dropped": {
            delivery: sum(r["camera_dropped"] for r in rows if r["delivery"] == delivery)
            for delivery in ("lossless", "latest")
        },
        "lossless_backpressure_s": round(sum(r["backpressure_seconds"] for r in lossless), 1),
        **latency,
        "backlog_cleared_s": round(cleared[0] - run.t_end_s, 1) if cleared else None,
        "checks": checks,
        "ok": all(checks.values()),
        "per_camera": rows,
        "inspector_summary": run.summary,
        "sample_columns": SAMPLE_COLUMNS,
        "samples": [s.row() for s in run.samples],
        "load_before": round(run.load_before, 2),
        "cores": os.cpu_count(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "model_dir": str(model),
    }


def main(argv: Sequence[str] | None = None) -> int:
    plan = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="overload-") as tmp:
        scratch = Path(tmp)
        model = model_package(plan, scratch)
        line = InspectorProcess(model, scratch / "inspector", plan, scratch / "inspector.log")
        try:
            run = run_line(line, plan)
        except BaseException:
            line.proc.kill()
            sys.stderr.write((scratch / "inspector.log").read_text()[-4000:])
            raise
        result = report(run, plan, scratch / "inspector" / "records.sqlite", model)
    say(f"checks: {result['checks']}")
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
