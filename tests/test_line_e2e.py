"""The whole line as processes: camera → inspector → SQLite, MES webhook and /metrics over HTTP."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge_inspect.sinks.record_store import RecordStore
from tests.helpers import MesReceiver, wait_until

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def edge_inspect(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "edge_inspect", *args], stdout=subprocess.PIPE, text=True, env=env
    )


def start_inspector(
    model: Path, workdir: Path, bus: str, metrics_port: int, mes_url: str
) -> subprocess.Popen:
    proc = edge_inspect(
        "serve",
        "--model",
        str(model),
        "--workdir",
        str(workdir),
        "--bind",
        bus,
        "--results",
        "",
        "--metrics-port",
        str(metrics_port),
        "--mes-url",
        mes_url,
        "--mes-max-backoff",
        "1",
    )
    ready = json.loads(proc.stdout.readline())
    assert ready["event"] == "ready" and ready["provider"] == "CPUExecutionProvider"
    return proc


def run_camera(bus: str, frames: int) -> dict:
    camera = edge_inspect(
        "camera",
        "synthetic",
        "--endpoint",
        bus,
        "--camera-id",
        "cam-e2e",
        "--station",
        "st-e2e",
        "--fps",
        "40",
        "--max-frames",
        str(frames),
        "--width",
        "96",
        "--height",
        "64",
        "--channels",
        "1",
        "--seed",
        "3",
    )
    out, _ = camera.communicate(timeout=60)
    assert camera.returncode == 0
    return json.loads(out.strip().splitlines()[-1])


def recorded_ids(workdir: Path) -> set[str]:
    store = RecordStore(workdir / "records.sqlite")
    try:
        return {r.result_id for r in store.query(limit=10_000)}
    finally:
        store.close()


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


def test_camera_to_inspector_to_sqlite_mes_and_metrics(toy_model_dir: Path, tmp_path: Path) -> None:
    mes = MesReceiver()
    bus, metrics_port = f"tcp://127.0.0.1:{free_port()}", free_port()
    inspector = start_inspector(toy_model_dir, tmp_path, bus, metrics_port, mes.url)
    try:
        stats = run_camera(bus, 30)
        assert stats["sent"] == 30 and stats["dropped"] == 0
        wait_until(lambda: len(recorded_ids(tmp_path)) == 30, 30, "30 recorded results")
        wait_until(lambda: len(set(mes.keys)) == 30, 30, "30 MES deliveries")
        metrics = scrape(metrics_port)
        assert metrics["edgeinspect_frames_received_total"] == 30
        assert metrics["edgeinspect_frames_inspected_total"] == 30
        assert metrics["edgeinspect_stage_duration_seconds_count"] == 30 * 7  # seven stages per frame
        assert metrics.get("edgeinspect_frames_dropped_total", 0) == 0
        inspector.send_signal(signal.SIGTERM)
        out, _ = inspector.communicate(timeout=30)
    finally:
        if inspector.poll() is None:
            inspector.kill()
        mes.close()
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["inspected"] == 30 and summary["malformed"] == 0
    assert set(mes.keys) == recorded_ids(tmp_path)
    assert {body["camera_id"] for body in mes.bodies.values()} == {"cam-e2e"}


def test_sigkill_while_mes_is_down_loses_no_result(toy_model_dir: Path, tmp_path: Path) -> None:
    bus, mes_port = f"tcp://127.0.0.1:{free_port()}", free_port()
    mes_url = f"http://127.0.0.1:{mes_port}/mes/results"  # nothing listens there yet: the MES is down
    inspector = start_inspector(toy_model_dir, tmp_path, bus, free_port(), mes_url)
    try:
        run_camera(bus, 20)
        wait_until(lambda: len(recorded_ids(tmp_path)) == 20, 30, "20 recorded results")
    finally:
        inspector.send_signal(signal.SIGKILL)
        inspector.wait(timeout=10)
    assert inspector.returncode == -signal.SIGKILL

    mes = MesReceiver(mes_port)
    restarted = start_inspector(toy_model_dir, tmp_path, bus, free_port(), mes_url)
    try:
        expected = recorded_ids(tmp_path)
        assert len(expected) == 20
        wait_until(lambda: set(mes.keys) >= expected, 30, "every result delivered after the restart")
    finally:
        restarted.send_signal(signal.SIGTERM)
        restarted.communicate(timeout=30)
        mes.close()
    # At least once: each key arrived, possibly more than once; the receiver de-duplicates by key.
    assert set(mes.keys) == expected and len(mes.bodies) == 20
