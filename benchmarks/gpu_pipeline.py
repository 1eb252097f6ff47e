"""End-to-end GPU line benchmark: simulated 5-megapixel cameras → ZeroMQ → inspector on the device frame path.

Run from the repository root on a CUDA machine:

    .venv/bin/python -m benchmarks.gpu_pipeline [--model DIR] [--cameras 1,4,16] [--runtime ort|torch]

Measures, with one model, one runtime and one batch size:
- per camera count (--cameras, each camera at --fps): judged frames per second, p50 / p99 capture-to-verdict
  latency (the result's `timings_ms.total`: camera timestamp to verdict, transport over loopback included)
  and frames lost (see "dropped" below). A frame is judged once its verdict is on the host, which waits for
  the device work it needed, so these wall-clock figures need no extra synchronisation;
- model_only_fps: the runtime alone (`run_device`) on a preprocessed batch of --max-batch frames already on
  the device, calls back to back, timed after warm-up between two synchronisations;
- pipeline_fps: the saturated line, as many cameras as the largest count sending as fast as the inspector
  takes frames (lossless); efficiency = pipeline_fps / model_only_fps;
- stream_density: the most cameras at --fps held without a dropped frame and with p99 within
  --p99-budget-ms: doubling from the counts measured, then bisecting, up to --max-cameras. It assumes that
  a line that fails with some cameras fails with more.
Every figure is the median of --repeats runs (dropped frames: the sum), each timed over --seconds after
--warmup seconds of the same line running; progress goes to stderr, the last stdout line is one JSON object.

How each run is set up, and why:
- Cameras are separate processes (spawned, not forked: the parent holds a CUDA context), as gateways are:
  each has its own interpreter and ZeroMQ I/O thread, so sending is not the bottleneck and never takes
  the GIL from the inspector's threads. Camera threads would share one GIL with the inspector and one
  ZeroMQ I/O thread for all their frames: 16 x 10 x 15 MB = 2.4 GB/s at the target. On loopback the
  senders' kernel copies still run on this host; on a line they run on the gateways.
- Each camera cycles through a pool of synthetic parts rendered once before timing (memory-mapped and
  shared by every camera process), raw encoding, lossless delivery, timestamped when sent as the camera
  gateway does. Triggers are spread evenly over the frame period (free-running cameras); --trigger common
  fires every camera at once, the worst case for latency.
- The pool holds parts the model judges OK: the inspector archives every NG and REVIEW part as a lossless
  PNG on its sink thread, which at 5 MP would time the PNG encoder instead of the frame path. A line makes
  mostly good parts; the JSON says how many pool parts the model passed.
- The inspector runs in this process (no metrics port, no results socket; latencies come from its record
  store). Before the cameras start, its runtime runs once for every batch size up to --max-batch (CUDA
  graph capture, cuDNN algorithm search and allocations are first-use costs), and each camera opens with a
  burst of frames so that the line forms full batches and the pinned staging ring grows to its full size
  during the warm-up, not in the timed window.
- dropped: frames sent but never judged, and from the timed window on: frames the inspector dropped,
  sends a camera had to wait for (back-pressure: a camera without a deep buffer loses that frame),
  triggers missed while waiting and frames abandoned at stop; `dropped_by` has each.

Runs: --repeats for the saturated line and for each camera count, and as many per density probe; with the
defaults 12 runs of --warmup + --seconds, plus 3 per probe.

The default model is a PatchCore model (EfficientNet-Lite0 features, anomaly map) trained once on good
synthetic parts of the benchmark's frame size and cached in var/bench/gpu-pipeline/; the demo model (ELPV
solar cells) judges every synthetic part NG. `--device cpu --smoke` runs the same line on CPU tensors with
small frames and short runs: it checks the script where there is no GPU (CI) and measures nothing worth
reporting.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import multiprocessing
import os
import queue
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

# Only the camera side at module level: the spawned camera processes import this module and need neither
# torch nor ONNX Runtime.
from edge_inspect.bus.transport import FrameSender
from edge_inspect.camera_adapters.base import CameraConfig, frame_message, next_slot

if TYPE_CHECKING:
    from multiprocessing.synchronize import Event

    from edge_inspect.inspector.config import InspectorConfig
    from edge_inspect.inspector.service import Inspector
    from edge_inspect.models.package import ModelPackage

# The targets.
TARGET_P99_MS = 20.0
TARGET_CAMERAS = 16
TARGET_EFFICIENCY = 0.9
SMOKE_DEFAULTS: dict[str, Any] = {
    # One eighth of 2448x2048 each way: the same aspect, tiny payloads.
    "frame": "306x256",
    "cameras": "1,2",
    "seconds": 2.0,
    "warmup": 1.0,
    "repeats": 1,
    "max_cameras": 4,
}
MODEL_CACHE = Path("var/bench/gpu-pipeline")
# Parts the cameras cycle through; each camera starts at its own offset.
POOL_FRAMES = 8
# Rounds of POOL_FRAMES candidates rendered while looking for parts the model judges OK.
POOL_ROUNDS = 4
# Disjoint from the training seeds below: the benchmark sends parts the default model never saw.
POOL_SEED = 100
TRAIN_GOOD, TRAIN_DEFECTIVE_PER_KIND, TEST_GOOD = 80, 8, 2
TRAIN_GOOD_SEED, TRAIN_DEFECT_SEED, TEST_SEED = 1, 10, 2
# Runtime calls before model-only timing: graph capture, algorithm choice, allocator growth.
MODEL_WARMUP_CALLS = 10
# Camera processes import numpy, OpenCV and ZeroMQ and map the frame pool before they report ready.
READY_TIMEOUT_S = 120.0
# After the cameras stop, time for the inspector to take what they already sent.
DRAIN_TIMEOUT_S = 60.0
STATION = "bench-line"


def say(message: str) -> None:
    print(f"[gpu-pipeline] {message}", file=sys.stderr, flush=True)


# -- options ------------------------------------------------------------------------------------------


def frame_size(text: str) -> tuple[int, int]:
    """'WIDTHxHEIGHT' as (width, height)."""
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT, e.g. 2448x2048") from None
    if width < 32 or height < 32:
        raise argparse.ArgumentTypeError(f"{text}: synthetic parts need at least 32x32 pixels")
    return width, height


def camera_counts(text: str) -> list[int]:
    """'1,4,16' as sorted distinct positive counts."""
    try:
        counts = sorted({int(part) for part in text.split(",")})
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of counts") from None
    if not counts or counts[0] < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: camera counts must be at least 1")
    return counts


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help=f"model package directory; None: PatchCore on synthetic parts, trained once into {MODEL_CACHE}",
    )
    parser.add_argument("--cameras", type=camera_counts, default="1,4,16", help="camera counts to measure")
    parser.add_argument("--fps", type=float, default=10.0, help="frames per second of each camera")
    parser.add_argument("--frame", type=frame_size, default="2448x2048", help="WIDTHxHEIGHT (5 MP)")
    parser.add_argument("--channels", type=int, choices=(1, 3), default=3, help="1 mono, 3 BGR")
    parser.add_argument("--seconds", type=float, default=20.0, help="timed seconds per run")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds the line runs before timing")
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure (the median is reported)")
    parser.add_argument("--runtime", choices=("ort", "torch"), default="ort", help="device runtime")
    parser.add_argument("--cuda-graph", action="store_true", help="with --runtime torch: replay CUDA graphs")
    parser.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        default="cuda",
        help="cuda: the benchmark; cpu: the device frame path on CPU tensors, to check the script runs",
    )
    parser.add_argument("--max-batch", type=int, default=8, help="the inspector's largest micro-batch")
    parser.add_argument(
        "--max-wait-ms",
        type=float,
        default=10.0,
        help="the inspector's longest wait to fill a batch; a lone frame waits this long",
    )
    parser.add_argument(
        "--max-cameras", type=int, default=32, help="upper bound of the stream density search"
    )
    parser.add_argument(
        "--p99-budget-ms", type=float, default=TARGET_P99_MS, help="p99 a camera count must hold for density"
    )
    parser.add_argument(
        "--trigger",
        choices=("spread", "common"),
        default="spread",
        help="spread: camera triggers evenly over the frame period; common: all at once",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help=f"small frames, short runs ({SMOKE_DEFAULTS}); options given explicitly win",
    )
    args = parser.parse_args(argv)
    if args.smoke:
        parser.set_defaults(**SMOKE_DEFAULTS)
        args = parser.parse_args(argv)
    if args.fps <= 0 or not math.isfinite(args.fps):
        parser.error(f"--fps {args.fps} must be a positive number")
    if args.seconds <= 0 or args.warmup < 0 or args.repeats < 1 or args.max_batch < 1:
        parser.error(
            "--seconds must be positive, --warmup not negative, --repeats and --max-batch at least 1"
        )
    if args.max_cameras < 1:
        parser.error(f"--max-cameras {args.max_cameras} must be at least 1")
    if args.cuda_graph and (args.runtime != "torch" or args.device != "cuda"):
        parser.error(
            "--cuda-graph replays the torch runtime's CUDA graphs: add --runtime torch --device cuda"
        )
    return args


def device_description(device: str) -> str:
    """What runs the device frame path, or exit saying why the GPU benchmark cannot run here."""
    import torch

    if device == "cpu":
        from benchmarks.pipeline import cpu_model

        return f"cpu: {cpu_model()}, {os.cpu_count()} cores"
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        sys.exit(
            "gpu_pipeline: unset TRITON_INTERPRET; the line would preprocess with the interpreted kernel "
            "(--device cpu --smoke checks the script without a GPU)"
        )
    if not torch.cuda.is_available():
        sys.exit(
            "gpu_pipeline: needs a CUDA GPU, and torch.cuda.is_available() is False here "
            "(--device cpu --smoke runs the same line on CPU tensors)"
        )
    return torch.cuda.get_device_name()


# -- frames and model ---------------------------------------------------------------------------------


def render_good_part(task: tuple[int, int, int, int]) -> np.ndarray:
    """Good synthetic part `index` of the benchmark's pool (process-pool worker)."""
    from edge_inspect.camera_adapters.synthetic import SyntheticSource

    width, height, channels, index = task
    return SyntheticSource(width, height, channels, defect_rate=0.0, seed=POOL_SEED).part(index).image


def write_training_part(task: tuple[str, int, int, int, str | None, int, int]) -> None:
    """One training image as PNG (process-pool worker): rendering 5 MP parts takes about half a second."""
    import cv2

    from edge_inspect.camera_adapters.synthetic import synthesize_part

    path, width, height, channels, defect, seed, index = task
    image, _ = synthesize_part(np.random.default_rng([seed, index]), height, width, channels, defect)
    # Level 1: these PNGs are read once, by the training below; size does not matter, encoding time does.
    if not cv2.imwrite(path, image, [cv2.IMWRITE_PNG_COMPRESSION, 1]):
        raise OSError(f"could not write {path}")


def spawn_pool(tasks: int) -> ProcessPoolExecutor:
    workers = max(1, min(tasks, os.cpu_count() or 1))
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


def default_model(width: int, height: int, channels: int) -> Path:
    """The cached PatchCore package for this frame geometry, trained first if it is not there.

    Trained on parts of the very size the cameras send: the model input is a resize of the whole frame, and
    parts rendered smaller and resized by a different factor look different enough to score as anomalies.
    """
    from edge_inspect.camera_adapters.synthetic import DEFECT_KINDS
    from edge_inspect.models.package import ModelPackageError, load_package

    directory = MODEL_CACHE / f"patchcore-{width}x{height}x{channels}"
    try:
        load_package(directory)
    except ModelPackageError:
        pass
    else:
        say(f"default model: {directory} (cached)")
        return directory
    from edge_inspect.training.train_patchcore import train_patchcore

    say(
        f"building the default model in {directory}: PatchCore on {TRAIN_GOOD} good synthetic "
        f"{width}x{height} parts (once; later runs reuse it)"
    )
    with tempfile.TemporaryDirectory(prefix="gpu-pipeline-") as tmp:
        # The folder's name becomes the model's: synthetic-2448x2048x3-patchcore.
        root = Path(tmp) / f"synthetic-{width}x{height}x{channels}"
        plan = [("train/good", None, TRAIN_GOOD_SEED, TRAIN_GOOD), ("test/good", None, TEST_SEED, TEST_GOOD)]
        plan += [
            (f"train/{kind}", kind, TRAIN_DEFECT_SEED + k, TRAIN_DEFECTIVE_PER_KIND)
            for k, kind in enumerate(DEFECT_KINDS)
        ]
        tasks = []
        for folder, defect, seed, count in plan:
            (root / folder).mkdir(parents=True)
            tasks += [
                (str(root / folder / f"{i:04d}.png"), width, height, channels, defect, seed, i)
                for i in range(count)
            ]
        with spawn_pool(len(tasks)) as pool:
            list(pool.map(write_training_part, tasks))
        train_patchcore(str(root), directory)
    return directory


def judged_ok_pool(package: ModelPackage, width: int, height: int, channels: int) -> tuple[np.ndarray, int]:
    """The parts the cameras cycle through, (K, H, W) or (K, H, W, C), and how many of them the model judges
    OK: only OK parts when it passes any, else the parts rendered, with a warning. Judged on the host path
    (numpy preprocessing, ONNX Runtime on the CPU), independently of the line under test."""
    from edge_inspect.inspector.infer import load_model
    from edge_inspect.inspector.postprocess import postprocess
    from edge_inspect.inspector.preprocess import preprocess_batch
    from edge_inspect.inspector.rules import QualityRules

    model = load_model(package, "cpu")
    kept: list[np.ndarray] = []
    rendered: list[np.ndarray] = []
    with spawn_pool(POOL_FRAMES) as pool:
        for round_index in range(POOL_ROUNDS):
            indices = range(round_index * POOL_FRAMES, (round_index + 1) * POOL_FRAMES)
            images = list(pool.map(render_good_part, [(width, height, channels, i) for i in indices]))
            rendered += images
            outputs = model.run(preprocess_batch(images, package.card.preprocess))
            judgements = postprocess(outputs, package.card, QualityRules(), [(height, width)] * len(images))
            kept += [image for image, j in zip(images, judgements, strict=True) if j.verdict == "OK"]
            if len(kept) >= POOL_FRAMES:
                return np.stack(kept[:POOL_FRAMES]), POOL_FRAMES
    if not kept:
        say(
            f"WARNING: the model judges none of {len(rendered)} good synthetic parts OK; every frame will be "
            "archived as a PNG, and the figures are the archive's, not the frame path's"
        )
        return np.stack(rendered[:POOL_FRAMES]), 0
    say(f"the model judged {len(kept)} of {len(rendered)} good synthetic parts OK; the cameras cycle those")
    return np.stack(kept), len(kept)


# -- cameras (separate processes) ---------------------------------------------------------------------


@dataclass(frozen=True)
class CameraJob:
    index: int
    endpoint: str
    fps: float  # 0: as fast as the inspector takes frames
    phase_s: float  # trigger offset within the frame period
    burst: int  # frames sent back to back at the start, in the warm-up
    warmup_s: float
    pool_path: str


@dataclass(frozen=True)
class CameraCounts:
    """One camera's run. `sent` counts the whole run, the rest only from the timed window on."""

    sent: int
    backpressure: int
    missed_trigger: int
    abandoned: int


def send_frames(
    job: CameraJob, start_at: Any, go: Event, stop: Event, ready: Callable[[], None]
) -> CameraCounts:
    """Pace, stamp and send pool frames until `stop`; the camera gateway's loop (`run_camera`) with counts of
    what the timed window lost, which its statistics do not separate from the warm-up."""
    pool = np.load(job.pool_path, mmap_mode="r")
    # Fault the shared pages in now rather than on the first timed sends.
    int(pool.max())
    config = CameraConfig(camera_id=f"bench-cam-{job.index + 1:02d}", station=STATION, endpoint=job.endpoint)
    first_window_slot = math.ceil(max(0.0, job.warmup_s - job.phase_s) * job.fps)
    missed = 0
    with FrameSender(job.endpoint, "lossless", should_stop=stop.is_set) as sender:
        ready()
        go.wait()
        started = start_at.value
        window = started + job.warmup_s
        baseline = None
        seq = slot = 0
        while not stop.is_set():
            if job.fps > 0 and seq >= job.burst:
                due = started + job.phase_s + slot / job.fps
                if stop.wait(max(0.0, due - time.monotonic())):
                    break
            if baseline is None and time.monotonic() >= window:
                baseline = sender.stats
            part = (job.index + seq) % len(pool)
            header, payload = frame_message(pool[part], config, seq, time.time_ns(), f"pool-{part}")
            sender.send(header, payload)
            seq += 1
            if job.fps > 0 and seq > job.burst:
                following = next_slot(slot, time.monotonic() - started - job.phase_s, job.fps)
                missed += max(0, following - max(slot + 1, first_window_slot))
                slot = following
        final = sender.stats
    base = final if baseline is None else baseline
    return CameraCounts(
        sent=final.sent,
        backpressure=final.backpressure_events - base.backpressure_events,
        missed_trigger=missed,
        abandoned=final.dropped - base.dropped,
    )


def camera_process(job: CameraJob, start_at: Any, go: Event, stop: Event, reports: Any) -> None:
    """A camera process's entry point: its counts, or its error, go back on `reports`."""
    try:
        counts = send_frames(job, start_at, go, stop, lambda: reports.put(("ready", job.index, None)))
    except BaseException:  # the parent must hear of any failure, or it waits for this camera
        reports.put(("error", job.index, traceback.format_exc()))
        raise
    reports.put(("counts", job.index, asdict(counts)))


class CameraFleet:
    """The camera processes of one run: started, released together at a common start time, stopped."""

    def __init__(self, jobs: list[CameraJob]) -> None:
        context = multiprocessing.get_context("spawn")
        self.start_at = context.Value("d", 0.0)
        self.go = context.Event()
        self.stop = context.Event()
        self.reports = context.Queue()
        self.processes = [
            context.Process(
                target=camera_process,
                args=(job, self.start_at, self.go, self.stop, self.reports),
                name=f"bench-camera-{job.index + 1}",
                daemon=True,
            )
            for job in jobs
        ]

    def start(self) -> float:
        """Start every camera, wait until all are connected, release them; returns the start (monotonic)."""
        for process in self.processes:
            process.start()
        self._collect("ready", READY_TIMEOUT_S)
        # CLOCK_MONOTONIC is system-wide on Linux: every process schedules from this same instant.
        self.start_at.value = time.monotonic() + 0.1
        self.go.set()
        return self.start_at.value

    def finish(self) -> list[CameraCounts]:
        self.stop.set()
        counts = [CameraCounts(**value) for value in self._collect("counts", DRAIN_TIMEOUT_S)]
        for process in self.processes:
            process.join()
        return counts

    def kill(self) -> None:
        """Stop whatever still runs, after a failure elsewhere."""
        self.stop.set()
        for process in self.processes:
            if process.is_alive():
                process.terminate()
            process.join()

    def _collect(self, kind: str, timeout_s: float) -> list[Any]:
        values: dict[int, Any] = {}
        deadline = time.monotonic() + timeout_s
        while len(values) < len(self.processes):
            try:
                got, index, value = self.reports.get(timeout=1.0)
            except queue.Empty:
                dead = [
                    f"{p.name} (exit code {p.exitcode})"
                    for i, p in enumerate(self.processes)
                    if i not in values and p.exitcode is not None
                ]
                if dead:
                    raise RuntimeError(
                        f"camera processes ended before reporting {kind}: {', '.join(dead)}"
                    ) from None
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{len(self.processes) - len(values)} camera processes did not report {kind} within "
                        f"{timeout_s:g} s"
                    ) from None
                continue
            if got == "error":
                raise RuntimeError(f"camera {index + 1} failed:\n{value}")
            if got == kind:
                values[index] = value
        return [values[index] for index in sorted(values)]


# -- line runs ----------------------------------------------------------------------------------------


@dataclass
class LineSettings:
    model_dir: Path
    device: str
    runtime: str
    cuda_graph: bool
    max_batch: int
    max_wait_ms: float
    fps: float
    trigger: str
    seconds: float
    warmup_s: float
    pool_path: Path
    workdir: Path
    runs: int = 0  # runs so far, naming each run's work directory

    def config(self, workdir: Path) -> InspectorConfig:
        from edge_inspect.inspector.config import build_config

        return build_config(
            {
                "model": {"package": self.model_dir},
                "records": {"workdir": workdir},
                "bus": {"bind": "tcp://127.0.0.1:*", "results": None},
                "metrics": {"port": None},
                "batching": {"max_batch": self.max_batch, "max_wait_ms": self.max_wait_ms},
                "inference": {
                    "device": self.device,
                    "frame_path": "device",
                    "runtime": self.runtime,
                    "cuda_graph": self.cuda_graph,
                },
            }
        )


@dataclass(frozen=True)
class RunResult:
    fps: float
    latencies_ms: list[float]
    dropped: dict[str, int]


def warm_every_batch_size(inspector: Inspector, max_batch: int) -> None:
    """Run the inspector's model once per batch size the line can form: first-use costs (CUDA graph capture,
    cuDNN algorithm search, ONNX Runtime allocations per shape) would otherwise land in the timed window."""
    import torch

    runtime = inspector.active.model
    recipe = inspector.active.card.preprocess
    for size in range(1, max_batch + 1):
        shape = (size, recipe.channels, recipe.height, recipe.width)
        runtime.run_device(torch.zeros(shape, dtype=runtime.input_dtype, device=runtime.device))
    if runtime.device.type == "cuda":
        torch.cuda.synchronize(runtime.device)


def sleep_until(monotonic_s: float) -> None:
    time.sleep(max(0.0, monotonic_s - time.monotonic()))


def line_run(settings: LineSettings, cameras: int, fps: float) -> RunResult:
    """One run of the line with `cameras` cameras at `fps` each (0: saturated)."""
    from edge_inspect.inspector.device.gpu_frames import DEFAULT_SLOTS
    from edge_inspect.inspector.service import Inspector
    from edge_inspect.sinks.record_store import RecordStore

    settings.runs += 1
    config = settings.config(settings.workdir / f"run-{settings.runs:03d}-{cameras}cam")
    # Enough frames at once for every staging slot to carry a full batch.
    burst = math.ceil((DEFAULT_SLOTS + 1) * settings.max_batch / cameras)
    inspector = Inspector(config)
    try:
        warm_every_batch_size(inspector, settings.max_batch)
        inspector.start()
        jobs = [
            CameraJob(
                index=i,
                endpoint=inspector.receiver.endpoint,
                fps=fps,
                phase_s=i / (cameras * fps) if fps > 0 and settings.trigger == "spread" else 0.0,
                burst=burst,
                warmup_s=settings.warmup_s,
                pool_path=str(settings.pool_path),
            )
            for i in range(cameras)
        ]
        fleet = CameraFleet(jobs)
        try:
            started = fleet.start()
            # The window in wall-clock ns as well: the clock of the cameras' capture stamps.
            started_ns = time.time_ns() + round((started - time.monotonic()) * 1e9)
            window_start = started + settings.warmup_s
            sleep_until(window_start)
            before = inspector.summary()
            sleep_until(window_start + settings.seconds)
            after = inspector.summary()
            counts = fleet.finish()
        except BaseException:
            fleet.kill()
            raise
        sent = sum(c.sent for c in counts)
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while inspector.summary()["received"] < sent and time.monotonic() < deadline:
            time.sleep(0.05)
        if inspector.summary()["received"] < sent:
            say(f"WARNING: the inspector did not take every frame sent within {DRAIN_TIMEOUT_S:g} s")
    finally:
        # Judges and records everything already received before returning.
        inspector.stop()
    judged = inspector.summary()["inspected"]
    del inspector
    gc.collect()
    store = RecordStore(config.db_path)
    try:
        window_start_ns = started_ns + round(settings.warmup_s * 1e9)
        window_end_ns = window_start_ns + round(settings.seconds * 1e9)
        results = store.query(since_ns=window_start_ns, until_ns=window_end_ns, limit=10**9)
    finally:
        store.close()
    dropped = {
        "inspector": after["dropped"] - before["dropped"],
        "unjudged": sent - judged,
        "backpressure": sum(c.backpressure for c in counts),
        "missed_trigger": sum(c.missed_trigger for c in counts),
        "abandoned": sum(c.abandoned for c in counts),
    }
    fps_judged = (after["inspected"] - before["inspected"]) / settings.seconds
    return RunResult(fps_judged, [r.timings_ms.total for r in results], dropped)


def median_or_none(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 2) if present else None


def measure_count(settings: LineSettings, cameras: int, repeats: int) -> dict[str, Any]:
    """The paced line with `cameras` cameras: medians over `repeats` runs, dropped frames summed."""
    from edge_inspect.demo import latency_percentiles

    runs = []
    for repeat in range(repeats):
        result = line_run(settings, cameras, settings.fps)
        p50, p99 = latency_percentiles(result.latencies_ms)
        runs.append((result, p50, p99))
        say(
            f"{cameras} cameras, run {repeat + 1}/{repeats}: {result.fps:.1f} frames/s, p50 {p50} ms, "
            f"p99 {p99} ms, dropped {sum(result.dropped.values())}"
        )
    dropped_by = {key: sum(r.dropped[key] for r, _, _ in runs) for key in runs[0][0].dropped}
    return {
        "fps": round(statistics.median(r.fps for r, _, _ in runs), 2),
        "p50_ms": median_or_none([p50 for _, p50, _ in runs]),
        "p99_ms": median_or_none([p99 for _, _, p99 in runs]),
        "dropped": sum(dropped_by.values()),
        "dropped_by": dropped_by,
        "samples": sum(len(r.latencies_ms) for r, _, _ in runs),
    }


def held(entry: dict[str, Any], budget_ms: float) -> bool:
    return entry["dropped"] == 0 and entry["p99_ms"] is not None and entry["p99_ms"] <= budget_ms


def stream_density(
    measure: Callable[[int], dict[str, Any]], known: dict[int, dict[str, Any]], budget_ms: float, limit: int
) -> tuple[int, dict[int, dict[str, Any]]]:
    """The most cameras held (see `held`), up to `limit`, and the probes run to find it.

    Starts from the counts already measured: the largest that held below the smallest that failed, then
    doubles until a count fails or reaches `limit`, then bisects.
    """
    probes: dict[int, dict[str, Any]] = {}

    def holds(count: int) -> bool:
        if count not in known and count not in probes:
            say(f"stream density: probing {count} cameras")
            probes[count] = measure(count)
        return held(known.get(count) or probes[count], budget_ms)

    failed = [n for n in known if n <= limit and not held(known[n], budget_ms)]
    high = min(failed) if failed else None
    passed = [n for n in known if n <= limit and held(known[n], budget_ms) and (high is None or n < high)]
    low = max(passed, default=0)
    while high is None and low < limit:
        candidate = min(max(1, 2 * low), limit)
        if holds(candidate):
            low = candidate
        else:
            high = candidate
    while high is not None and high - low > 1:
        middle = (low + high) // 2
        if holds(middle):
            low = middle
        else:
            high = middle
    return low, probes


def model_only_fps(
    package: ModelPackage, settings: LineSettings, pool: np.ndarray, repeats: int, window_s: float
) -> float:
    """Median throughput of the runtime alone on a ready batch of `max_batch` pool frames on the device."""
    import torch

    from edge_inspect.inspector.device.runtimes import load_runtime
    from edge_inspect.inspector.preprocess import preprocess_batch

    runtime = load_runtime(package, settings.runtime, settings.device, settings.cuda_graph)
    frames = [pool[i % len(pool)] for i in range(settings.max_batch)]
    host = preprocess_batch(frames, package.card.preprocess)
    batch = torch.from_numpy(host).to(runtime.device, runtime.input_dtype)
    device = runtime.device

    def synchronise() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(MODEL_WARMUP_CALLS):
        runtime.run_device(batch)
    synchronise()
    started = time.perf_counter()
    runtime.run_device(batch)
    synchronise()
    calls = max(MODEL_WARMUP_CALLS, math.ceil(window_s / (time.perf_counter() - started)))
    rates = []
    for _ in range(repeats):
        synchronise()
        started = time.perf_counter()
        for _ in range(calls):
            runtime.run_device(batch)
        synchronise()
        rates.append(calls * settings.max_batch / (time.perf_counter() - started))
    del runtime, batch
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return statistics.median(rates)


def main(argv: Sequence[str] | None = None) -> int:
    from edge_inspect.logs import setup_logging

    args = parse_args(argv)
    # The inspector's events (its frame path and why, failures) as JSON lines on stderr.
    setup_logging()
    device_name = device_description(args.device)
    width, height = args.frame
    from edge_inspect.inspector.config import build_config
    from edge_inspect.inspector.service import plan_frame_path
    from edge_inspect.models.package import ModelPackageError, load_package

    model_dir = args.model or default_model(width, height, args.channels)
    try:
        package = load_package(model_dir)
        # Refuse now, not after rendering frames, when the device frame path cannot run as asked.
        plan_frame_path(
            build_config(
                {
                    "model": {"package": model_dir},
                    "inference": {
                        "device": args.device,
                        "frame_path": "device",
                        "runtime": args.runtime,
                        "cuda_graph": args.cuda_graph,
                    },
                }
            )
        )
    except (ModelPackageError, RuntimeError, ValueError) as exc:
        sys.exit(f"gpu_pipeline: {exc}")
    card = package.card
    say(f"{device_name}; model {card.name}:{card.version}; runtime {args.runtime}; frames {width}x{height}")

    with tempfile.TemporaryDirectory(prefix="gpu-pipeline-") as tmp:
        say(f"rendering the frame pool ({POOL_FRAMES} parts of {width}x{height}x{args.channels})")
        pool, judged_ok = judged_ok_pool(package, width, height, args.channels)
        pool_path = Path(tmp) / "pool.npy"
        np.save(pool_path, pool)
        settings = LineSettings(
            model_dir=model_dir,
            device=args.device,
            runtime=args.runtime,
            cuda_graph=args.cuda_graph,
            max_batch=args.max_batch,
            max_wait_ms=args.max_wait_ms,
            fps=args.fps,
            trigger=args.trigger,
            seconds=args.seconds,
            warmup_s=args.warmup,
            pool_path=pool_path,
            workdir=Path(tmp),
        )
        say(f"model-only throughput, batch {args.max_batch}")
        model_fps = model_only_fps(package, settings, pool, args.repeats, min(2.0, args.seconds / 4))
        say(f"model-only: {model_fps:.1f} frames/s")

        saturating = max(args.cameras)
        rates = []
        for repeat in range(args.repeats):
            result = line_run(settings, saturating, 0.0)
            rates.append(result.fps)
            say(
                f"saturated line, {saturating} cameras, run {repeat + 1}/{args.repeats}: "
                f"{result.fps:.1f} frames/s"
            )
        pipeline_fps = statistics.median(rates)

        per_count = {n: measure_count(settings, n, args.repeats) for n in args.cameras}
        density, probes = stream_density(
            lambda n: measure_count(settings, n, args.repeats),
            per_count,
            args.p99_budget_ms,
            args.max_cameras,
        )

    efficiency = pipeline_fps / model_fps
    at_target = per_count.get(TARGET_CAMERAS)
    p99_target = None
    if at_target is not None and at_target["p99_ms"] is not None:
        p99_target = at_target["p99_ms"] < TARGET_P99_MS and at_target["dropped"] == 0
    print(
        json.dumps(
            {
                "device": device_name,
                "runtime": args.runtime,
                "cuda_graph": args.cuda_graph,
                "frame": f"{width}x{height}x{args.channels} uint8 raw",
                "fps_per_camera": args.fps,
                "trigger": args.trigger,
                "model": f"{card.name}:{card.version}",
                "model_input": f"{card.preprocess.width}x{card.preprocess.height} {card.preprocess.colour}",
                "max_batch": args.max_batch,
                "max_wait_ms": args.max_wait_ms,
                "cameras": {str(n): entry for n, entry in per_count.items()},
                "model_only_fps": round(model_fps, 2),
                "pipeline_fps": round(pipeline_fps, 2),
                "pipeline_cameras": saturating,
                # Significant digits, not decimals: a tiny smoke-test model makes it 0.000x.
                "efficiency": float(f"{efficiency:.3g}"),
                "stream_density": density,
                "density": {
                    "p99_budget_ms": args.p99_budget_ms,
                    "max_cameras": args.max_cameras,
                    "capped": density == args.max_cameras,
                    "probes": {str(n): entry for n, entry in sorted(probes.items())},
                },
                "targets": {
                    "p99_under_20ms_at_16": p99_target,
                    "efficiency_0_9": efficiency >= TARGET_EFFICIENCY,
                },
                "frame_pool": {"frames": len(pool), "judged_ok": judged_ok},
                "repeats": args.repeats,
                "seconds": args.seconds,
                "warmup_s": args.warmup,
                "smoke": args.smoke,
                "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
