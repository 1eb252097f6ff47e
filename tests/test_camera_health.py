"""Camera health: the gateway's device counters and the last-frame age reach /metrics and the record store,
and a camera that stops is reported silent after its own limit."""

from __future__ import annotations

import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

from edge_inspect.bus.contracts import CameraHealth, FrameHeader, parse_header
from edge_inspect.camera_adapters.base import CameraConfig, SourceFrame, SourceHealth, run_camera
from edge_inspect.inspector.camera_health import CameraBook, camera_families
from edge_inspect.inspector.service import Inspector
from edge_inspect.sinks.record_store import RecordStore
from tests.helpers import loopback_config, wait_until

NS = 1_000_000_000


def header(camera: str, health: CameraHealth | None = None, frame_id: int | None = None) -> FrameHeader:
    return FrameHeader(camera, 0, "st-1", 0, 8, 8, 1, health=health, source_frame_id=frame_id)


def test_header_with_health_round_trips_and_stays_optional() -> None:
    full = header("cam-1", CameraHealth(captured=5, reconnects=1, underruns=2, stale_events=3), frame_id=77)
    assert parse_header(full.to_bytes()) == full
    # A gateway from before these fields still speaks v1.
    old = b'{"camera_id":"c","seq":1,"station":"s","t_capture_ns":0,"width":8,"height":8,"channels":1}'
    assert parse_header(old).health is None


def test_book_keeps_the_newest_reading_and_families_report_age_and_silence() -> None:
    book = CameraBook()
    book.seen(header("cam-a", CameraHealth(captured=1)), 10 * NS)
    book.seen(header("cam-a", CameraHealth(captured=2, reconnects=1), frame_id=9), 11 * NS)
    book.seen(header("cam-b"), 14 * NS)
    version, readings = book.snapshot()
    assert version == 3
    assert [(r.camera_id, r.frames_received, r.health.captured) for r in readings] == [
        ("cam-a", 2, 2),
        ("cam-b", 1, 0),
    ]
    families = {f.name: f for f in camera_families(readings, 16 * NS, lambda cam: 3.0)}
    samples = {(f, s.labels["camera"]): s.value for f, fam in families.items() for s in fam.samples}
    assert samples[("edgeinspect_camera_last_frame_age_seconds", "cam-a")] == 5.0
    assert samples[("edgeinspect_camera_silent", "cam-a")] == 1.0
    assert samples[("edgeinspect_camera_silent", "cam-b")] == 0.0
    assert samples[("edgeinspect_camera_reconnects", "cam-a")] == 1.0


class _DeviceSource:
    """A source with a device's counters: every 5th frame it 'reconnects', ids skip after frame 3."""

    def __init__(self, frames: int) -> None:
        self.health = SourceHealth()
        self.frames = frames

    def __iter__(self):
        for index in range(self.frames):
            if index == 3:
                self.health.underruns += 2
                self.health.reconnects += 1
            frame_id = index if index < 3 else index + 2
            yield SourceFrame(np.full((24, 32), 40, np.uint8), frame_id=frame_id, t_source_ns=frame_id * 1000)


def scrape(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


def test_inspector_exposes_gateway_health_and_reports_a_stopped_camera_silent(
    toy_map_model_dir: Path, tmp_path: Path
) -> None:
    config = loopback_config(
        tmp_path,
        {
            "model.package": toy_map_model_dir,
            "metrics.port": 0,
            "camera_defaults.silent_after_s": 1.0,
        },
    )
    with Inspector(config) as inspector:
        camera = CameraConfig("cam-h", "st-1", inspector.receiver.endpoint, fps=50, drain_s=10)
        stats = run_camera(_DeviceSource(6), camera, threading.Event())
        assert stats.acked == 6 and stats.underruns == 2 and stats.device_reconnects == 1
        port = inspector.metrics_server.port
        text = scrape(port)
        assert 'edgeinspect_camera_frames_captured_total{camera="cam-h"} 6.0' in text
        assert 'edgeinspect_camera_underruns_total{camera="cam-h"} 2.0' in text
        assert 'edgeinspect_camera_reconnects_total{camera="cam-h"} 1.0' in text
        assert 'edgeinspect_camera_silent{camera="cam-h"} 0.0' in text
        wait_until(lambda: 'edgeinspect_camera_silent{camera="cam-h"} 1.0' in scrape(port), 5, "silent")

        def saved() -> list:
            with RecordStore(config.db_path) as store:
                return store.camera_health()

        wait_until(lambda: len(saved()) == 1, 5, "camera health saved to the record store")
        row = saved()[0]
        assert (row.camera_id, row.frames_received, row.source_frame_id) == ("cam-h", 6, 7)
        assert row.health == CameraHealth(captured=6, reconnects=1, underruns=2, stale_events=0)
        assert time.time_ns() - row.last_frame_ns > 0
    # After a restart the camera is still known, and still silent.
    with Inspector(config) as inspector:
        assert 'edgeinspect_camera_silent{camera="cam-h"} 1.0' in scrape(inspector.metrics_server.port)
