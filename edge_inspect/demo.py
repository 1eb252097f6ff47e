"""The demo line (`edge-inspect demo`): a camera replaying ELPV solar cells, the inspector, live alarms.

It runs the same processes as a real deployment, on loopback: `edge-inspect camera elpv` (the gateway),
`edge-inspect serve` (the MEC service) and `edge-inspect console` (the operator console in a browser,
with a demo login made for this run), and subscribes to the inspector's results for the terminal view.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from edge_inspect.bus.contracts import InspectionResult

CAMERA_ID = "line1-cam1"
STATION = "line1-el-tester"
CONSOLE_PORT = 8090
DEMO_USER = "demo"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class DemoPaths:
    workdir: Path

    @property
    def model_dir(self) -> Path:
        return self.workdir / "model"

    @property
    def inspector_dir(self) -> Path:
        return self.workdir / "inspector"

    @property
    def console_users(self) -> Path:
        return self.workdir / "console-users.json"


def latency_percentiles(totals_ms: list[float]) -> tuple[float | None, float | None]:
    if not totals_ms:
        return None, None
    p50, p99 = np.percentile(np.asarray(totals_ms), [50, 99])
    return round(float(p50), 2), round(float(p99), 2)


def alarm_line(result: InspectionResult, expert_label: str) -> str:
    """One line of the alarm view: local time, camera, part id, verdict, score, defect, expert label."""
    stamp = time.strftime("%H:%M:%S", time.localtime(result.t_capture_ns / 1e9))
    millis = (result.t_capture_ns // 1_000_000) % 1000
    defect = result.defects[0].cls if result.defects else "-"
    return (
        f"{stamp}.{millis:03d}  {result.verdict:<6} {result.camera_id:<11} part {result.part_id or '-':<10} "
        f"score {result.score:.3f}  defect {defect:<15} expert label: {expert_label}"
    )


def expert_labels() -> dict[str, str]:
    """ELPV's own labels by part id, shown beside each alarm so the viewer can judge the alarm."""
    from edge_inspect.training.datasets import load_elpv

    return {
        s.path.stem: f"{'defective' if s.defective else 'functional'} (p={s.probability:.2f})"
        for s in load_elpv()
    }


def _spawn(args: list[str], stdout: int | IO[Any] | None = subprocess.PIPE) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "edge_inspect", *args], stdout=stdout, text=True, env=env)


def _wait_ready(inspector: subprocess.Popen, timeout_s: float = 120.0) -> dict[str, Any]:
    assert inspector.stdout is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = inspector.stdout.readline()
        if not line:
            raise RuntimeError("the inspector exited during start-up; run it alone with -v to see why")
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if event.get("event") == "ready":
            return event
    raise RuntimeError(f"the inspector was not ready within {timeout_s:.0f} s")


def port_or_free(port: int) -> int:
    """`port` when it is free on loopback, else any free port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return free_port()
    return port


def _start_console(paths: DemoPaths, port: int) -> tuple[subprocess.Popen, str, str]:
    """The operator console on the demo's records, with a fresh password for the demo login each run
    (an engineer, so that every view is open to it). Returns the process, its URL and the password."""
    from edge_inspect.console.users import add_user

    password = secrets.token_urlsafe(9)
    add_user(paths.console_users, DEMO_USER, "engineer", password)
    console = _spawn(
        [
            *("console", "--workdir", str(paths.inspector_dir), "--users", str(paths.console_users)),
            *("--port", str(port_or_free(port))),
        ]
    )
    assert console.stdout is not None
    for line in console.stdout:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if event.get("event") == "console_ready":
            return console, event["url"], password
    raise RuntimeError(
        "the console exited during start-up; run `edge-inspect console -v --workdir ...` to see why"
    )


def _watch(endpoint: str, stop: threading.Event, labels: dict[str, str], seen: Counter, out: IO[str]) -> None:
    import zmq

    with zmq.Context() as ctx, ctx.socket(zmq.SUB) as sub:
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.setsockopt(zmq.RCVTIMEO, 200)
        sub.connect(endpoint)
        while not stop.is_set():
            try:
                _, payload = sub.recv_multipart()
            except zmq.Again:
                continue
            result = InspectionResult.from_dict(json.loads(payload))
            seen[result.verdict] += 1
            if result.verdict != "OK":
                print(alarm_line(result, labels.get(result.part_id or "", "unknown")), file=out, flush=True)


def run_demo(
    workdir: Path, seconds: float | None, fps: float, as_json: bool, console_port: int = CONSOLE_PORT
) -> dict[str, Any]:
    from edge_inspect.sinks.record_store import RecordStore
    from edge_inspect.training.demo_model import prepare_demo_model

    paths = DemoPaths(workdir)
    view = sys.stderr if as_json else sys.stdout
    print(
        f"Preparing the demo model in {paths.model_dir} (trained on the first run, about 2-4 minutes on 2 "
        "CPU cores; cached after that)…",
        file=view,
        flush=True,
    )
    model_dir = prepare_demo_model(paths.model_dir, progress=True)
    bus = f"tcp://127.0.0.1:{free_port()}"
    results = f"tcp://127.0.0.1:{free_port()}"
    metrics_port = free_port()
    inspector = _spawn(
        [
            *("serve", "--model", str(model_dir), "--workdir", str(paths.inspector_dir), "--bind", bus),
            *("--results", results, "--metrics-port", str(metrics_port)),
        ]
    )
    camera = console = None
    console_url: str | None = None
    stop = threading.Event()
    seen: Counter = Counter()
    t_start_ns = time.time_ns()
    try:
        _wait_ready(inspector)
        console, console_url, password = _start_console(paths, console_port)
        print(
            f"EdgeInspect demo line: camera {CAMERA_ID} replays ELPV test cells at {fps:g} parts/s\n"
            f"  console:       {console_url}  (log in as {DEMO_USER} / {password})\n"
            f"  metrics:       http://127.0.0.1:{metrics_port}/metrics\n"
            f"  records:       {paths.inspector_dir / 'records.sqlite'}  (edge-inspect records --db ...)\n"
            f"  NG images:     {paths.inspector_dir / 'images'}\n"
            f"  model:         {model_dir}\n"
            "Alarms (every NG and REVIEW part); Ctrl-C stops.",
            file=view,
            flush=True,
        )
        watcher = threading.Thread(
            target=_watch, args=(results, stop, expert_labels(), seen, view), daemon=True
        )
        watcher.start()
        time.sleep(0.3)  # a SUB socket joins late; let it connect before parts flow
        camera = _spawn(
            [
                *("camera", "elpv", "--split", "test", "--loop", "--fps", str(fps), "--endpoint", bus),
                *("--camera-id", CAMERA_ID, "--station", STATION),
            ],
            stdout=subprocess.DEVNULL,
        )
        try:
            if seconds is None:
                camera.wait()
            else:
                camera.wait(timeout=seconds)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            pass
    finally:
        for proc in (camera, inspector, console):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                if proc is camera:
                    proc.wait(timeout=30)
        if console is not None:
            console.communicate(timeout=30)
        out, _ = inspector.communicate(timeout=120)
        stop.set()
    served = json.loads(out.strip().splitlines()[-1])
    store = RecordStore(paths.inspector_dir / "records.sqlite", paths.inspector_dir / "images")
    try:
        totals = [r.timings_ms.total for r in store.query(since_ns=t_start_ns, limit=10**9)]
    finally:
        store.close()
    p50, p99 = latency_percentiles(totals)
    verdicts = served.get("inspected_by_verdict", {})
    return {
        "inspected": served.get("inspected", 0),
        "ok": verdicts.get("OK", 0),
        "ng": verdicts.get("NG", 0),
        "review": verdicts.get("REVIEW", 0),
        "dropped": served.get("dropped", 0),
        "malformed": served.get("malformed", 0),
        "p50_ms": p50,
        "p99_ms": p99,
        "metrics_url": f"http://127.0.0.1:{metrics_port}/metrics",
        "console_url": console_url,
        "records_db": str(paths.inspector_dir / "records.sqlite"),
        "image_dir": str(paths.inspector_dir / "images"),
        "model": str(model_dir),
        "provider": served.get("provider"),
    }
