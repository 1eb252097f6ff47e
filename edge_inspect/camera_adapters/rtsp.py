"""RTSP / H.264 IP cameras through OpenCV's FFmpeg backend, recovered whenever they drop.

`RtspSource` reads one RTSP stream over TCP (interleaved in the RTSP connection) or UDP. Every blocking call
is bounded: the open by `open_timeout_s`, each read by `read_timeout_s` (OpenCV's FFmpeg interrupt
callback), a reconnection backoff by its delay, checked against the stop condition every 50 ms. A stream
that fails is released, reported (`camera_lost`) and reopened with capped exponential backoff until the
camera is back (`reconnects`). A watchdog thread reports a camera that has delivered no new frame for
`stale_after_s` (`camera_stream_stale`, `stale_events`), once per silence, wherever the adapter is waiting.

Frame identity comes from the stream's presentation timestamps (PTS), which OpenCV gives as
`CAP_PROP_PTS` in frame periods of the stream's declared rate (`CAP_PROP_POS_MSEC` is not used: OpenCV
reports 0 for both of a stream's first two frames). Per frame:

- `t_source_ns`: the frame's PTS in ns on the clock of the current RTSP session (FFmpeg counts it from the
  stream's start, the session's first frame unless FFmpeg options discard the frames it probes): the
  camera's clock for the stream, which starts again after each reconnect (a new session);
- `frame_id`: the frame's index on that clock (PTS over the frame period), continued across reconnects:
  after an outage the next session starts where the frames the camera would have sent meanwhile end, so
  ids only grow and a gap in them is frames we did not get;
- `underruns`: those gaps: frames missing between two PTS of a session (dropped by the camera or lost on
  the network), plus, after a reconnect, the time between the last frame and the reopening in frame
  periods (a client cannot tell a dead camera from a broken network). Counted only with a known frame
  rate (`expected_fps` or the rate the stream declares).

A frame whose PTS does not advance past the previous frame's is never yielded: the last frame of a stalled
stream is not judged again as new.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import cv2

from edge_inspect.camera_adapters.base import (
    SourceError,
    SourceFrame,
    SourceHealth,
    backoff_delay,
    wait_or_stop,
)
from edge_inspect.camera_adapters.video import open_capture, redact_uri
from edge_inspect.logs import log_event

logger = logging.getLogger(__name__)

TRANSPORTS: tuple[str, ...] = ("tcp", "udp")
URL_SCHEMES: tuple[str, ...] = ("rtsp://", "rtsps://")
# Above this a "frame rate" is a clock rate: FFmpeg falls back to the 90 kHz RTP clock when it cannot tell.
MAX_PLAUSIBLE_FPS = 1000.0
OPEN_HINT = (
    "check the URL and its credentials, that the camera is powered and reachable from this gateway, and that "
    "the transport is allowed on the way (udp needs the RTP ports open through firewalls and NAT; tcp "
    "passes wherever RTSP does)"
)


@dataclass(frozen=True, repr=False)
class RtspSettings:
    """One RTSP camera.

    `url`: rtsp://[user:password@]host[:port]/path (rtsps:// for RTSP over TLS). `transport`: "tcp" (RTP
    interleaved in the RTSP connection: no loss, passes firewalls and NAT) or "udp" (lower latency; packets
    lost on the network become damaged or missing frames). `open_timeout_s` bounds connecting and reading
    the stream's description; `read_timeout_s` bounds the wait for one frame, after which the stream is
    reopened. `stale_after_s` is the watchdog: a camera without a new frame for that long is reported.
    Reconnection attempts wait `reconnect_first_s`, doubling up to `reconnect_max_s`. `expected_fps`: the
    camera's frame rate, when its stream does not declare it (or declares it wrongly); it numbers frames
    and sizes gaps."""

    url: str
    transport: str = "tcp"
    open_timeout_s: float = 10.0
    read_timeout_s: float = 5.0
    stale_after_s: float = 5.0
    reconnect_first_s: float = 0.5
    reconnect_max_s: float = 10.0
    expected_fps: float | None = None

    def __repr__(self) -> str:
        # Settings get logged and printed: the URL's password stays out of them.
        fields = {name: getattr(self, name) for name in self.__dataclass_fields__}
        fields["url"] = redact_uri(self.url)
        return f"RtspSettings({', '.join(f'{name}={value!r}' for name, value in fields.items())})"

    def __post_init__(self) -> None:
        if not self.url.lower().startswith(URL_SCHEMES):
            raise ValueError(
                f"RTSP url {redact_uri(self.url)!r} must start with rtsp:// or rtsps:// "
                "(files and USB cameras are the 'video' source)"
            )
        if self.transport not in TRANSPORTS:
            raise ValueError(f"transport {self.transport!r} is not one of {TRANSPORTS}")
        for name in ("open_timeout_s", "read_timeout_s", "stale_after_s"):
            value = getattr(self, name)
            if not 0.1 <= value <= 3600:
                raise ValueError(f"{name}={value} must lie in 0.1..3600 seconds")
        if not (0 < self.reconnect_first_s <= self.reconnect_max_s <= 3600):
            raise ValueError(
                f"reconnect_first_s={self.reconnect_first_s} and reconnect_max_s={self.reconnect_max_s} must "
                "satisfy 0 < first <= max <= 3600 seconds"
            )
        if self.expected_fps is not None and not 0 < self.expected_fps <= MAX_PLAUSIBLE_FPS:
            raise ValueError(
                f"expected_fps={self.expected_fps} must lie in (0, {MAX_PLAUSIBLE_FPS:g}] frames per second "
                "(leave it unset to use the rate the stream declares)"
            )


def ffmpeg_options(transport: str) -> str:
    """The FFmpeg demuxer options for `transport`, in OpenCV's "key;value" form."""
    return f"rtsp_transport;{transport}"


def open_params(settings: RtspSettings) -> list[int]:
    """OpenCV open parameters: the FFmpeg backend's open and read timeouts in ms."""
    return [
        cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
        round(settings.open_timeout_s * 1000),
        cv2.CAP_PROP_READ_TIMEOUT_MSEC,
        round(settings.read_timeout_s * 1000),
    ]


def plausible_fps(value: float) -> float | None:
    return value if 0 < value <= MAX_PLAUSIBLE_FPS and math.isfinite(value) else None


class StreamPosition(NamedTuple):
    """Where a frame lies on the stream's clock: `t_ns` since the stream's start, and `index` in frame
    periods; either None when the stream gives no usable timestamp or rate."""

    t_ns: int | None
    index: int | None


def stream_position(pts: float, stream_fps: float, fps: float | None) -> StreamPosition:
    """A frame's position from OpenCV's `CAP_PROP_PTS` (`pts`, in periods of the rate OpenCV reports as
    `CAP_PROP_FPS`, `stream_fps`, which is the clock rate itself when the stream declares no frame rate),
    numbered at `fps` frames per second."""
    if not (math.isfinite(pts) and pts >= 0 and math.isfinite(stream_fps) and stream_fps > 0):
        return StreamPosition(None, None)
    seconds = pts / stream_fps
    return StreamPosition(round(seconds * 1e9), None if fps is None else round(seconds * fps))


def outage_frames(silent_s: float, fps: float | None) -> int:
    """Frames a camera running at `fps` sends between a last frame and the first one `silent_s` later,
    neither counted; 0 without a known rate."""
    if fps is None or silent_s <= 0:
        return 0
    return max(0, round(silent_s * fps) - 1)


class FrameNumbering:
    """Frame ids from stream indices, continued across sessions, and the frames missing between them.

    Each session's indices start again; `start_session` places the next session after the last id and
    the frames missed in the outage. `number` gives (frame_id, missed before it), or None for an index
    that does not advance: a repeated frame."""

    def __init__(self) -> None:
        self.last_id: int | None = None
        self._base = 0
        self._first_index: int | None = None
        self._last_index: int | None = None

    def start_session(self, missed: int) -> None:
        self._base = 0 if self.last_id is None else self.last_id + 1 + missed
        self._first_index = self._last_index = None

    def number(self, index: int) -> tuple[int, int] | None:
        if self._first_index is None:
            self._first_index = index
        elif self._last_index is not None and index <= self._last_index:
            return None
        missed = 0 if self._last_index is None else index - self._last_index - 1
        self._last_index = index
        self.last_id = self._base + index - self._first_index
        return self.last_id, missed


class SilenceWatchdog:
    """A thread that calls `on_stale(silent_s)` once when `kick` has not been called for `stale_after_s`,
    and again only after a kick: once per silence. It watches from the first kick on."""

    def __init__(self, stale_after_s: float, on_stale: Callable[[float], None]) -> None:
        self._stale_after_s = stale_after_s
        self._on_stale = on_stale
        self._lock = threading.Lock()
        self._last = time.monotonic()
        # Unarmed until the first kick: "reported" already, so nothing fires.
        self._reported = True
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rtsp-watchdog", daemon=True)
        self._thread.start()

    def kick(self) -> None:
        with self._lock:
            self._last = time.monotonic()
            self._reported = False

    def _run(self) -> None:
        poll_s = min(0.1, self._stale_after_s / 4)
        while not self._done.wait(poll_s):
            with self._lock:
                silent_s = time.monotonic() - self._last
                due = not self._reported and silent_s >= self._stale_after_s
                self._reported |= due
            if due:
                self._on_stale(silent_s)

    def stop(self) -> None:
        self._done.set()
        self._thread.join(timeout=5)


class RtspSource:
    """Frames of an RTSP camera (`RtspSettings`) as BGR images, for as long as it is iterated: the stream
    is opened on first iteration and reopened whenever it fails, so a camera that is down when the
    gateway starts is waited for. `health` counts reconnects, underruns and stale events.

    Iterate it once. `should_stop` (the gateway's stop event) and `close` end the iteration within the
    longest blocking call (`open_timeout_s` or `read_timeout_s`), and at once while waiting to reconnect."""

    def __init__(self, settings: RtspSettings, should_stop: Callable[[], bool] | None = None) -> None:
        self.settings = settings
        self.camera = redact_uri(settings.url)
        self.health = SourceHealth()
        self._should_stop = should_stop or (lambda: False)
        self._closed = threading.Event()

    def __iter__(self) -> Iterator[SourceFrame]:
        watchdog = SilenceWatchdog(self.settings.stale_after_s, self._report_stale)
        numbering = FrameNumbering()
        last_frame_at: float | None = None
        had_session = False
        # Consecutive failures without a frame (opens that failed, streams that died before their first
        # frame): they space the next attempts; a frame resets them.
        failures = 0
        try:
            while not self._stopping():
                if failures and wait_or_stop(self._backoff(failures), self._should_stop, self._closed):
                    return
                try:
                    capture, opened_at = self._open()
                except SourceError as exc:
                    failures += 1
                    self._log_failure(str(exc), failures, had_session)
                    continue
                self._log_opened(had_session, failures)
                if not had_session:
                    # Silence counts from the first answer on; a camera that never answered is camera_lost.
                    watchdog.kick()
                had_session = True
                received = False
                try:
                    for frame in self._session(capture, numbering, opened_at, last_frame_at):
                        last_frame_at = time.monotonic()
                        received, failures = True, 0
                        watchdog.kick()
                        yield frame
                finally:
                    capture.release()
                failures += 0 if received else 1
        finally:
            watchdog.stop()

    def _stopping(self) -> bool:
        return self._closed.is_set() or self._should_stop()

    def _backoff(self, failures: int) -> float:
        return backoff_delay(failures - 1, self.settings.reconnect_first_s, self.settings.reconnect_max_s)

    def _open(self) -> tuple[cv2.VideoCapture, float]:
        """The opened stream and when its opening began (about when its first frame was sent)."""
        started = time.monotonic()
        capture = open_capture(
            self.settings.url,
            backend=cv2.CAP_FFMPEG,
            params=open_params(self.settings),
            ffmpeg_options=ffmpeg_options(self.settings.transport),
            hint=f"no stream within open_timeout_s={self.settings.open_timeout_s}; {OPEN_HINT}",
        )
        return capture, started

    def _log_failure(self, error: str, failures: int, had_session: bool) -> None:
        # The first failure is the news (a session that ended has said so already); the retries are detail.
        event = "camera_lost" if failures == 1 and not had_session else "camera_reconnect_failed"
        log_event(
            logger,
            logging.WARNING if event == "camera_lost" else logging.INFO,
            event,
            camera=self.camera,
            attempt=failures,
            retry_in_s=self._backoff(failures),
            error=error,
        )

    def _log_opened(self, had_session: bool, failures: int) -> None:
        if not had_session:
            log_event(
                logger, logging.INFO, "camera_opened", camera=self.camera, transport=self.settings.transport
            )
            return
        self.health.reconnects += 1
        log_event(logger, logging.WARNING, "camera_reconnected", camera=self.camera, failed_attempts=failures)

    def _session(
        self,
        capture: cv2.VideoCapture,
        numbering: FrameNumbering,
        opened_at: float,
        last_frame_at: float | None,
    ) -> Iterator[SourceFrame]:
        """The new frames of one opened stream, until it fails or the source is told to stop."""
        stream_fps = capture.get(cv2.CAP_PROP_FPS)
        fps = self.settings.expected_fps or plausible_fps(stream_fps)
        received = 0
        while not self._stopping():
            ok, image = capture.read()
            if not ok or image is None:
                log_event(
                    logger,
                    logging.WARNING,
                    "camera_lost",
                    camera=self.camera,
                    error=(
                        "the stream ended or sent no frame within "
                        f"read_timeout_s={self.settings.read_timeout_s}"
                    ),
                )
                return
            position = stream_position(capture.get(cv2.CAP_PROP_PTS), stream_fps, fps)
            index = position.index if position.index is not None else received
            if received == 0:
                silent_s = 0.0 if last_frame_at is None else opened_at - last_frame_at
                missed = outage_frames(silent_s, fps)
                self.health.underruns += missed
                numbering.start_session(missed)
            received += 1
            numbered = numbering.number(index)
            if numbered is None:
                log_event(logger, logging.DEBUG, "frame_repeated", camera=self.camera, index=index)
                continue
            frame_id, missed = numbered
            self.health.underruns += missed
            yield SourceFrame(image, frame_id=frame_id, t_source_ns=position.t_ns)

    def _report_stale(self, silent_s: float) -> None:
        self.health.stale_events += 1
        log_event(
            logger,
            logging.WARNING,
            "camera_stream_stale",
            camera=self.camera,
            silent_s=round(silent_s, 3),
            stale_after_s=self.settings.stale_after_s,
        )

    def close(self) -> None:
        """End the iteration: a reconnection wait ends at once, a read or an open when it returns."""
        self._closed.set()
