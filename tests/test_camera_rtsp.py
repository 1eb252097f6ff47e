"""The RTSP adapter against a real RTSP camera on loopback (GStreamer's RTSP server with x264, started by
the test: tests/rtsp_peer.py): frames over TCP and UDP, a camera killed and restarted (recovered, the gap
counted, no frame twice), a stalled stream reported by the watchdog, frames the camera drops counted, a
stop that ends the wait for a camera that is not there, and the gateway's counters in a real inspector's
/metrics."""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest

from edge_inspect.camera_adapters.base import CameraConfig, SourceHealth, run_camera
from edge_inspect.camera_adapters.rtsp import (
    FrameNumbering,
    RtspSettings,
    RtspSource,
    ffmpeg_options,
    outage_frames,
    stream_position,
)
from edge_inspect.camera_adapters.video import FFMPEG_OPTIONS_VARIABLE
from edge_inspect.inspector.service import Inspector
from tests.helpers import loopback_config, wait_until
from tests.rtsp_peer import FPS, HEIGHT, WIDTH, RtspCamera

FRAME_NS = 1_000_000_000 // FPS
# Short limits keep the outage tests quick; a real camera would use the defaults.
FAST = {
    "open_timeout_s": 3.0,
    "read_timeout_s": 1.0,
    "stale_after_s": 1.0,
    "reconnect_first_s": 0.2,
    "reconnect_max_s": 0.5,
}


@pytest.fixture
def camera() -> Iterator[RtspCamera]:
    started = RtspCamera()
    started.start()
    yield started
    started.stop()


def settings(url: str, **overrides: object) -> RtspSettings:
    return RtspSettings(url, **{**FAST, **overrides})  # type: ignore[arg-type]


@dataclass(frozen=True)
class Seen:
    """One yielded frame and the source's counters right after it."""

    frame_id: int
    t_source_ns: int
    digest: str
    health: SourceHealth


def read_frames(source: RtspSource, done: Callable[[list[Seen]], bool]) -> list[Seen]:
    """Frames until `done(seen)`, then the iteration is closed as the gateway closes it."""
    seen: list[Seen] = []
    frames = iter(source)
    try:
        for frame in frames:
            assert frame.frame_id is not None and frame.t_source_ns is not None
            assert frame.image.shape == (HEIGHT, WIDTH, 3) and frame.image.dtype == np.uint8
            digest = hashlib.sha256(frame.image.tobytes()).hexdigest()
            seen.append(Seen(frame.frame_id, frame.t_source_ns, digest, replace(source.health)))
            if done(seen):
                break
    finally:
        frames.close()  # type: ignore[attr-defined]
    return seen


def id_gaps(seen: list[Seen]) -> int:
    return sum(b.frame_id - a.frame_id - 1 for a, b in itertools.pairwise(seen))


def assert_each_frame_once(seen: list[Seen]) -> None:
    """Ids only grow, and no image comes twice within a session (the test camera's pattern does not repeat
    within one; a restarted camera starts it again)."""
    ids = [s.frame_id for s in seen]
    assert ids == sorted(set(ids)), "frame ids must only grow"
    for reconnects in {s.health.reconnects for s in seen}:
        session = [s.digest for s in seen if s.health.reconnects == reconnects]
        assert len(set(session)) == len(session), "a frame was yielded twice"


def assert_one_period_apart(session: list[Seen]) -> None:
    start = session[0].t_source_ns
    assert [s.t_source_ns for s in session] == [start + i * FRAME_NS for i in range(len(session))]


def events(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records]


# Pure parts


def test_settings_refuse_what_cannot_work() -> None:
    with pytest.raises(ValueError, match=r"http://user:\*\*\*@cam/x.*'video' source"):
        RtspSettings("http://user:secret@cam/x")
    with pytest.raises(ValueError, match="transport"):
        RtspSettings("rtsp://cam/x", transport="http")
    with pytest.raises(ValueError, match="read_timeout_s=0"):
        RtspSettings("rtsp://cam/x", read_timeout_s=0)
    with pytest.raises(ValueError, match="first <= max"):
        RtspSettings("rtsp://cam/x", reconnect_first_s=5, reconnect_max_s=1)
    with pytest.raises(ValueError, match="expected_fps"):
        RtspSettings("rtsp://cam/x", expected_fps=90000)
    assert ffmpeg_options(RtspSettings("RTSP://cam/x", transport="udp").transport) == "rtsp_transport;udp"
    shown = repr(RtspSettings("rtsp://admin:secret@cam/x", expected_fps=25.0))
    assert "secret" not in shown and "url='rtsp://admin:***@cam/x'" in shown and "expected_fps=25.0" in shown


def test_stream_position_numbering_and_gaps() -> None:
    # OpenCV's PTS is in periods of the declared rate; with no plausible rate it is the 90 kHz clock.
    assert stream_position(50.0, 25.0, 25.0) == (2_000_000_000, 50)
    assert stream_position(180_000.0, 90_000.0, 25.0) == (2_000_000_000, 50)
    assert stream_position(180_000.0, 90_000.0, None) == (2_000_000_000, None)
    assert stream_position(-1.0, 25.0, 25.0) == (None, None)
    assert stream_position(3.0, 0.0, 25.0) == (None, None)
    assert outage_frames(1.0, 25.0) == 24 and outage_frames(0.03, 25.0) == 0 and outage_frames(9.0, None) == 0

    numbering = FrameNumbering()
    numbering.start_session(0)
    assert [numbering.number(i) for i in (0, 1, 3, 3, 2, 4)] == [(0, 0), (1, 0), (3, 1), None, None, (4, 0)]
    # The next session restarts its indices; its ids continue after the outage's missed frames.
    numbering.start_session(10)
    assert [numbering.number(i) for i in (0, 1)] == [(15, 0), (16, 0)]


# Against the real camera


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_frames_arrive_with_the_stream_clock(
    camera: RtspCamera, transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An operator's own FFmpeg options stay in force around the adapter's transport, and stay set.
    monkeypatch.setenv(FFMPEG_OPTIONS_VARIABLE, "fflags;nobuffer")
    source = RtspSource(settings(camera.url, transport=transport))
    seen = read_frames(source, lambda seen: len(seen) == 30)
    assert os.environ[FFMPEG_OPTIONS_VARIABLE] == "fflags;nobuffer"
    assert_each_frame_once(seen)
    # On loopback nothing is lost: consecutive ids, PTS one frame period apart from the session's start.
    assert [s.frame_id for s in seen] == list(range(30))
    assert_one_period_apart(seen)
    assert source.health == SourceHealth()


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_killed_camera_is_recovered_with_the_gap_counted(
    camera: RtspCamera, transport: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge_inspect.camera_adapters.rtsp")
    source = RtspSource(settings(camera.url, transport=transport))
    streaming = threading.Event()
    killed_at: list[float] = []
    outage_s = 2.0

    def kill_and_restart() -> None:
        if streaming.wait(20):
            camera.kill()
            killed_at.append(time.time())
            time.sleep(outage_s)
            camera.start()

    def done(seen: list[Seen]) -> bool:
        if len(seen) == 10:
            streaming.set()
        return sum(1 for s in seen if s.health.reconnects) >= 10 or len(seen) > 40 * FPS

    chaos = threading.Thread(target=kill_and_restart)
    chaos.start()
    try:
        seen = read_frames(source, done)
    finally:
        streaming.set()
        chaos.join(30)

    before = [s for s in seen if s.health.reconnects == 0]
    after = [s for s in seen if s.health.reconnects == 1]
    assert len(before) >= 10 and len(after) == 10 and len(before) + len(after) == len(seen)
    assert_each_frame_once(seen)
    # Each session has its own clock (it starts again), one frame period per frame.
    assert after[0].t_source_ns < before[-1].t_source_ns
    assert_one_period_apart(before)
    assert_one_period_apart(after)
    # The camera was away for the outage: its frames count as underruns and show as a gap in the ids.
    gap = after[0].frame_id - before[-1].frame_id - 1
    assert gap >= outage_s * FPS - 2
    assert source.health.underruns == id_gaps(seen) == gap
    assert source.health.stale_events == 1 and source.health.reconnects == 1
    names = events(caplog)
    assert max(names.index("camera_lost"), names.index("camera_stream_stale")) < names.index(
        "camera_reconnected"
    )
    # Noticed at once over TCP (the connection closes), within the read timeout over UDP.
    lost_at = next(r.created for r in caplog.records if r.getMessage() == "camera_lost")
    assert lost_at - killed_at[0] < FAST["read_timeout_s"] + 0.5


def test_stalled_stream_is_reported_stale_and_its_last_frame_never_sent_again(
    camera: RtspCamera, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge_inspect.camera_adapters.rtsp")
    # The read waits longer than the stall: the connection survives it and the watchdog alone reports it.
    source = RtspSource(settings(camera.url, read_timeout_s=6.0))
    stall_s = 2.5

    def stall() -> None:
        camera.stall()
        time.sleep(stall_s)
        camera.resume()

    staller = threading.Timer(1.5, stall)
    staller.start()
    started = time.monotonic()
    try:
        seen = read_frames(source, lambda seen: time.monotonic() - started > 1.5 + stall_s + 1.5)
    finally:
        staller.join(10)
    assert source.health.stale_events == 1 and source.health.reconnects == 0
    assert "camera_stream_stale" in events(caplog) and "camera_lost" not in events(caplog)
    assert_each_frame_once(seen)
    assert len({s.t_source_ns for s in seen}) == len(seen)
    assert source.health.underruns == id_gaps(seen)


def test_frames_the_camera_drops_count_as_underruns() -> None:
    camera = RtspCamera(drop_every=5)
    camera.start()
    try:
        source = RtspSource(settings(camera.url))
        seen = read_frames(source, lambda seen: len(seen) == 40)
    finally:
        camera.stop()
    assert_each_frame_once(seen)
    steps = [b.frame_id - a.frame_id for a, b in itertools.pairwise(seen)]
    # One frame in five never leaves the camera: a gap of one id every four frames.
    assert set(steps) == {1, 2} and 8 <= steps.count(2) <= 10
    assert source.health.underruns == id_gaps(seen) == steps.count(2)
    assert source.health.stale_events == 0 and source.health.reconnects == 0


def test_stop_ends_the_wait_for_a_camera_that_does_not_answer(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="edge_inspect.camera_adapters.rtsp")
    # A listening socket that never answers: the TCP handshake succeeds, RTSP never replies.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        stop = threading.Event()
        source = RtspSource(
            settings(f"rtsp://admin:secret@127.0.0.1:{port}/cam", open_timeout_s=1.0), stop.is_set
        )
        seen: list[Seen] = []
        reader = threading.Thread(target=lambda: seen.extend(read_frames(source, lambda _: False)))
        started = time.monotonic()
        reader.start()
        wait_until(lambda: "camera_lost" in events(caplog), 5, "the camera reported lost")
        assert time.monotonic() - started < 1.0 + 1.0
        wait_until(lambda: "camera_reconnect_failed" in events(caplog), 5, "a retry with backoff")
        stop.set()
        stopped = time.monotonic()
        reader.join(5)
        assert not reader.is_alive() and time.monotonic() - stopped < 1.0 + 0.5
    assert seen == []
    # A camera that never answered is lost, not stale; its password never reaches the logs.
    assert source.health == SourceHealth()
    fields = " ".join(str(getattr(record, "fields", "")) for record in caplog.records)
    assert "secret" not in fields and "admin:***@127.0.0.1" in fields


def scrape(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


def metric(text: str, name: str) -> float:
    line = next(line for line in text.splitlines() if line.startswith(f'{name}{{camera="cam-rtsp"}}'))
    return float(line.split()[-1])


def test_gateway_reports_the_camera_outage_to_the_inspector(
    camera: RtspCamera, toy_model_dir: Path, tmp_path: Path
) -> None:
    config = loopback_config(tmp_path, {"model.package": toy_model_dir, "metrics.port": 0})
    stop = threading.Event()
    with Inspector(config) as inspector:
        port = inspector.metrics_server.port
        gateway = CameraConfig("cam-rtsp", "st-1", inspector.receiver.endpoint, fps=0, drain_s=10)
        source = RtspSource(settings(camera.url), stop.is_set)
        stats: list = []
        thread = threading.Thread(target=lambda: stats.append(run_camera(source, gateway, stop)))
        thread.start()
        try:
            wait_until(lambda: "cam-rtsp" in scrape(port), 20, "the camera's first frames at the inspector")
            camera.kill()
            time.sleep(2.0)
            camera.start()
            wait_until(
                lambda: metric(scrape(port), "edgeinspect_camera_reconnects_total") == 1,
                20,
                "the reconnection",
            )
        finally:
            stop.set()
            thread.join(30)
        text = scrape(port)
    assert stats and stats[0].device_reconnects == 1 and stats[0].stale_events == 1
    # Acknowledgements still on their way when the gateway was stopped are counted as unacked.
    assert stats[0].acked + stats[0].unacked == stats[0].captured and stats[0].underruns >= 2.0 * FPS - 2
    assert metric(text, "edgeinspect_camera_frames_captured_total") == stats[0].captured
    assert metric(text, "edgeinspect_camera_underruns_total") == stats[0].underruns
    assert metric(text, "edgeinspect_camera_stale_events_total") == 1
    # The bus sequence stayed contiguous through the outage: the inspector saw no gap.
    assert 'reason="seq_gap"' not in text
