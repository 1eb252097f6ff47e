"""`lossless` means lossless, with real processes: a lossless camera at 40 parts/s while the inspector is
SIGKILLed and restarted on the same workdir, the gateway itself is SIGKILLed once and restarted, and the MES
is down for part of the run. Every captured frame ends as exactly one record and one MES delivery, except
frames the killed gateway reports lost. And `latest` with exact accounts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote

import pytest

from edge_inspect.sinks.record_store import RecordStore
from tests.helpers import MesReceiver, wait_until
from tests.test_line_e2e import free_port

pytestmark = pytest.mark.slow

CAMERA = "cam-ll"
FPS = 40


def edge_inspect(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "edge_inspect", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )


def start_inspector(model: Path, workdir: Path, bus: str, mes_url: str) -> subprocess.Popen:
    proc = edge_inspect(
        *("serve", "--model", str(model), "--workdir", str(workdir), "--bind", bus, "--results", ""),
        *("--metrics-port", str(free_port()), "--mes-url", mes_url, "--mes-max-backoff", "0.5"),
        *("--frame-path", "host", "--threads", "1"),
    )
    assert proc.stdout is not None
    ready = json.loads(proc.stdout.readline())
    assert ready["event"] == "ready"
    return proc


def start_camera(bus: str, frames: int, state_dir: Path, delivery: str = "lossless") -> subprocess.Popen:
    return edge_inspect(
        *("camera", "synthetic", "--endpoint", bus, "--camera-id", CAMERA, "--station", "st-ll"),
        *("--fps", str(FPS), "--max-frames", str(frames), "--delivery", delivery),
        *("--width", "96", "--height", "64", "--channels", "1", "--seed", "5"),
        *("--state-dir", str(state_dir), "--drain-s", "40"),
    )


def last_json(proc: subprocess.Popen, timeout_s: float) -> dict:
    out, _ = proc.communicate(timeout=timeout_s)
    assert proc.returncode == 0, out
    return json.loads(out.strip().splitlines()[-1])


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)


def records(workdir: Path) -> list[tuple[str, int]]:
    with RecordStore(workdir / "records.sqlite") as store:
        return [(r.result_id, r.seq) for r in store.query(camera_id=CAMERA, limit=100_000)]


def test_lossless_survives_inspector_and_gateway_kills_with_the_mes_down(
    toy_model_dir: Path, tmp_path: Path
) -> None:
    bus, mes_port = f"tcp://127.0.0.1:{free_port()}", free_port()
    mes_url = f"http://127.0.0.1:{mes_port}/mes/results"  # nothing listens yet: the MES is down
    workdir, state = tmp_path / "work", tmp_path / "gateway-state"
    inspector = start_inspector(toy_model_dir, workdir, bus, mes_url)
    first = start_camera(bus, 400, state)
    mes: MesReceiver | None = None
    try:
        for _ in range(2):  # the inspector SIGKILLed mid-stream, twice, restarted on the same workdir
            time.sleep(1.5)
            kill(inspector)
            inspector = start_inspector(toy_model_dir, workdir, bus, mes_url)
        time.sleep(1.0)
        kill(first)  # the gateway too: it must count what it lost when it comes back
        second = start_camera(bus, 200, state)
        time.sleep(1.5)
        kill(inspector)
        inspector = start_inspector(toy_model_dir, workdir, bus, mes_url)
        mes = MesReceiver(mes_port)  # the MES comes back
        stats = last_json(second, 60)
        expected = {result_id for result_id, _ in records(workdir)}
        wait_until(lambda: {unquote(k) for k in mes.keys} >= expected, 30, "every record delivered")
        inspector.send_signal(signal.SIGTERM)
        summary = last_json(inspector, 30)
    finally:
        for proc in (inspector, first):
            if proc.poll() is None:
                proc.kill()
        if mes is not None:
            mes.close()

    recorded = records(workdir)
    seqs = [seq for _, seq in recorded]
    first_seq, lost = stats["first_seq"], stats["lost_at_restart"]
    captured = set(range(first_seq + stats["captured"]))
    # Exactly one record per frame, and only frames the gateway captured.
    assert len(seqs) == len(set(seqs)) and set(seqs) <= captured
    # Every captured frame is recorded, except the killed gateway's unacknowledged ones, which it counted.
    missing = captured - set(seqs)
    assert missing <= set(range(first_seq - lost, first_seq)), (missing, first_seq, lost)
    assert (stats["captured"], stats["unacked"], stats["dropped"]) == (200, 0, 0)
    assert stats["acked"] == 200 and stats["reconnects"] >= 1
    # Exactly one MES delivery per record by Idempotency-Key (the receiver de-duplicates by key).
    assert mes is not None and {unquote(k) for k in mes.bodies} == {rid for rid, _ in recorded}
    assert summary["malformed"] == 0
    print(
        json.dumps(
            {
                "records": len(recorded),
                "captured": len(captured),
                "gateway_lost_at_restart": lost,
                "missing": len(missing),
                "resent": stats["resent"],
                "reconnects": stats["reconnects"],
                "last_inspector_duplicates": summary.get("duplicate", 0),
                "mes_posts": len(mes.keys),
            }
        )
    )


def test_latest_accounts_for_every_frame_exactly(toy_model_dir: Path, tmp_path: Path) -> None:
    bus = f"tcp://127.0.0.1:{free_port()}"
    workdir = tmp_path / "work"
    inspector = start_inspector(toy_model_dir, workdir, bus, f"http://127.0.0.1:{free_port()}/mes")
    try:
        camera = edge_inspect(
            *("camera", "synthetic", "--endpoint", bus, "--camera-id", CAMERA, "--delivery", "latest"),
            *("--fps", "0", "--max-frames", "300", "--width", "320", "--height", "240"),
        )
        stats = last_json(camera, 60)
        wait_until(
            lambda: len(records(workdir)) > 0 and inspector_idle(workdir), 20, "the inspector caught up"
        )
        inspector.send_signal(signal.SIGTERM)
        summary = last_json(inspector, 30)
    finally:
        if inspector.poll() is None:
            inspector.kill()
    recorded = sorted(seq for _, seq in records(workdir))
    superseded = summary["dropped_by_reason"].get("superseded", 0)
    seq_gap = summary["dropped_by_reason"].get("seq_gap", 0)
    # The camera: every captured frame was sent or dropped, never waited for.
    assert stats["captured"] == stats["sent"] + stats["dropped"] == 300
    assert stats["backpressure_events"] == 0 and stats["unacked"] == 0
    # The inspector: what was sent arrived (loopback, no kill), except at most the frames still queued in
    # the camera's socket when it exited (its linger expired under load); each was judged or superseded.
    assert 0 <= stats["sent"] - summary["received"] <= 2
    assert summary["inspected"] + superseded == summary["received"] == len(recorded) + superseded
    # Every seq from the first frame received (at most the first recorded) to the last is received or
    # counted as a gap; on loopback the gaps are exactly frames the camera dropped.
    span = summary["received"] + seq_gap
    assert recorded[-1] - recorded[0] + 1 <= span <= recorded[-1] + 1
    assert seq_gap <= stats["dropped"]


def inspector_idle(workdir: Path) -> bool:
    before = len(records(workdir))
    time.sleep(0.5)
    return len(records(workdir)) == before
