"""What GigE Vision (Aravis) and GenTL (harvesters) cameras share: their settings, the pixel conversion, and
the recovering stream loop.

The core is pure: `to_image` turns a GenICam buffer into the frame contract's arrays (mono uint8/uint16, or
BGR uint8/uint16), `frame_id_gap` reads lost frames from the camera's frame ids, `backoff_delay` spaces
reconnection attempts. `RecoveringStream` is the thin loop around a device session: it waits for frames with
a bounded timeout, counts what the device lost (`SourceHealth`), notices a silent or vanished camera, and
reopens it with capped exponential backoff until it is back, checking its stop condition all along.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import cv2
import numpy as np

from edge_inspect.camera_adapters.base import SourceError, SourceFrame, SourceHealth
from edge_inspect.logs import log_event

logger = logging.getLogger(__name__)


class PixelLayout(NamedTuple):
    """How a GenICam pixel format is stored (bytes per pixel, element type) and how it becomes a frame."""

    bytes_per_pixel: int
    dtype: type[np.unsignedinteger]
    channels: int
    # OpenCV conversion to BGR, or None when the samples are kept as they are (mono, BGR).
    to_bgr: int | None


def _bayer(code: int, dtype: type[np.unsignedinteger]) -> PixelLayout:
    return PixelLayout(np.dtype(dtype).itemsize, dtype, 1, code)


# GenICam names (PFNC) of the unpacked formats we read. OpenCV's older Bayer names (COLOR_BayerRG2BGR) are
# shifted by one pixel against GenICam's; the four-letter aliases name the same 2x2 tile as GenICam does.
PIXEL_FORMATS: dict[str, PixelLayout] = {
    "Mono8": PixelLayout(1, np.uint8, 1, None),
    "Mono10": PixelLayout(2, np.uint16, 1, None),
    "Mono12": PixelLayout(2, np.uint16, 1, None),
    "Mono14": PixelLayout(2, np.uint16, 1, None),
    "Mono16": PixelLayout(2, np.uint16, 1, None),
    "RGB8": PixelLayout(3, np.uint8, 3, cv2.COLOR_RGB2BGR),
    "BGR8": PixelLayout(3, np.uint8, 3, None),
    "RGBa8": PixelLayout(4, np.uint8, 4, cv2.COLOR_RGBA2BGR),
    "BGRa8": PixelLayout(4, np.uint8, 4, cv2.COLOR_BGRA2BGR),
    **{
        f"Bayer{tile[:2]}{bits}": _bayer(code, np.uint8 if bits == 8 else np.uint16)
        for tile, code in (
            ("RGGB", cv2.COLOR_BayerRGGB2BGR),
            ("BGGR", cv2.COLOR_BayerBGGR2BGR),
            ("GBRG", cv2.COLOR_BayerGBRG2BGR),
            ("GRBG", cv2.COLOR_BayerGRBG2BGR),
        )
        for bits in (8, 10, 12, 16)
    },
}

TRIGGER_MODES: tuple[str, ...] = ("free", "software", "line")


def to_image(
    data: bytes | np.ndarray, width: int, height: int, pixel_format: str, padding_x: int = 0
) -> np.ndarray:
    """The frame for one buffer: (H, W) mono or (H, W, 3) BGR, in an array of its own (the buffer goes back
    to the device). `padding_x` is the number of bytes that end each line beyond its pixels."""
    layout = PIXEL_FORMATS.get(pixel_format)
    if layout is None:
        raise ValueError(f"pixel format {pixel_format!r} is not one of {sorted(PIXEL_FORMATS)}")
    stride = width * layout.bytes_per_pixel + padding_x
    raw = np.frombuffer(data, np.uint8)
    needed = stride * (height - 1) + width * layout.bytes_per_pixel
    if width <= 0 or height <= 0 or raw.size < needed:
        raise ValueError(
            f"a {width}x{height} {pixel_format} buffer needs {needed} bytes, it has {raw.size}; "
            "the camera's pixel format or region changed under the stream"
        )
    if raw.size < stride * height:
        # The last line's padding may be cut off; pad so that the lines reshape evenly.
        raw = np.concatenate([raw, np.zeros(stride * height - raw.size, np.uint8)])
    lines = raw[: stride * height].reshape(height, stride)[:, : width * layout.bytes_per_pixel]
    # GenICam samples wider than a byte are little-endian unless a camera says otherwise.
    samples = np.ascontiguousarray(lines).view(np.dtype(layout.dtype).newbyteorder("<"))
    samples = samples.astype(layout.dtype, copy=False)
    shaped = samples.reshape(height, width) if layout.channels == 1 else samples.reshape(height, width, -1)
    if layout.to_bgr is None:
        return shaped.copy() if np.may_share_memory(shaped, raw) else shaped
    return cv2.cvtColor(shaped, layout.to_bgr)


# GigE Vision 1.x block ids are 16 bits and skip 0: after 65535 comes 1.
GEV_BLOCK_ID_MAX = 0xFFFF


def frame_id_gap(previous: int, current: int) -> int:
    """How many frames the camera produced between two frame ids we received (0 when none were lost).

    16-bit ids wrap from 65535 to 1; ids that go back otherwise mean the camera restarted its count (a
    power cycle), which loses nothing we could count by id."""
    if current > previous:
        return current - previous - 1
    if previous <= GEV_BLOCK_ID_MAX and current < previous:
        steps = GEV_BLOCK_ID_MAX - previous + current
        if steps <= GEV_BLOCK_ID_MAX // 2:
            return max(0, steps - 1)
    return 0


class FrameIdTracker:
    """Frames lost between received frame ids; frames known lost without an id (an incomplete buffer a
    producer discarded) are subtracted from the next gap so that no frame is counted twice."""

    def __init__(self) -> None:
        self.last: int | None = None
        self.lost_without_id = 0

    def missing(self, frame_id: int | None) -> int:
        if frame_id is None:
            return 0
        gap = 0 if self.last is None else frame_id_gap(self.last, frame_id)
        gap = max(0, gap - self.lost_without_id)
        self.lost_without_id = 0
        self.last = frame_id
        return gap


def backoff_delay(attempt: int, first_s: float, max_s: float) -> float:
    """The wait before reconnection attempt `attempt` (0-based): from `first_s`, doubling, up to `max_s`."""
    return min(max_s, first_s * 2 ** min(attempt, 32))


@dataclass(frozen=True)
class Roi:
    """The sensor region to read out, in pixels (GenICam OffsetX, OffsetY, Width, Height)."""

    x: int
    y: int
    width: int
    height: int

    def __post_init__(self) -> None:
        if self.x < 0 or self.y < 0:
            raise ValueError(f"ROI offset ({self.x}, {self.y}) must not be negative")
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"ROI size {self.width}x{self.height} must be positive")


@dataclass(frozen=True)
class GenICamSettings:
    """The camera features both adapters set, by their GenICam meaning; None keeps the camera's own value.

    `trigger`: "free" (the camera runs at `frame_rate`), "software" (the gateway triggers every frame, at its
    `fps`), "line" (a hardware line, `trigger_source`, e.g. "Line0", triggers every frame).
    `frame_timeout_s` is the watchdog: a stream silent for longer counts a stale event and the device is
    checked; a device that does not answer is reopened after `reconnect_first_s`, doubling up to
    `reconnect_max_s`. `buffers` is the number of frame buffers queued at the stream."""

    pixel_format: str | None = None
    exposure_us: float | None = None
    gain: float | None = None
    frame_rate: float | None = None
    roi: Roi | None = None
    trigger: str = "free"
    trigger_source: str = "Line0"
    buffers: int = 8
    frame_timeout_s: float = 1.0
    reconnect_first_s: float = 0.5
    reconnect_max_s: float = 10.0

    def __post_init__(self) -> None:
        if self.pixel_format is not None and self.pixel_format not in PIXEL_FORMATS:
            raise ValueError(
                f"pixel_format {self.pixel_format!r} is not one we convert; use one of "
                f"{sorted(PIXEL_FORMATS)} "
                "(packed formats such as Mono12p: choose the camera's unpacked variant)"
            )
        for name in ("exposure_us", "frame_rate"):
            value = getattr(self, name)
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise ValueError(
                    f"{name}={value} must be a positive number (leave it unset to keep the camera's)"
                )
        if self.gain is not None and not (self.gain >= 0 and math.isfinite(self.gain)):
            raise ValueError(f"gain={self.gain} must be a number >= 0 (leave it unset to keep the camera's)")
        if self.trigger not in TRIGGER_MODES:
            raise ValueError(f"trigger {self.trigger!r} is not one of {TRIGGER_MODES}")
        if self.trigger == "line" and not self.trigger_source:
            raise ValueError("trigger 'line' needs trigger_source, the camera's input line (e.g. 'Line0')")
        if not 2 <= self.buffers <= 256:
            raise ValueError(f"buffers={self.buffers} must lie in 2..256 (a handful is enough: 4 to 16)")
        if not (0.01 <= self.frame_timeout_s <= 3600):
            raise ValueError(f"frame_timeout_s={self.frame_timeout_s} must lie in 0.01..3600 seconds")
        if not (0 < self.reconnect_first_s <= self.reconnect_max_s <= 3600):
            raise ValueError(
                f"reconnect_first_s={self.reconnect_first_s} and reconnect_max_s={self.reconnect_max_s} must "
                "satisfy 0 < first <= max <= 3600 seconds"
            )


class Grab(NamedTuple):
    """One buffer from the device: `image` None when it arrived incomplete (lost packets)."""

    image: np.ndarray | None
    frame_id: int | None
    t_source_ns: int | None


class DeviceLost(Exception):
    """The device stopped answering or could not be opened; the stream reopens it."""


class DeviceSession(Protocol):
    """One open, configured and acquiring device; opening one raises DeviceLost when the device is not
    there, SourceError when it is there and refuses the settings."""

    def grab(self, timeout_s: float) -> Grab | None:
        """The next buffer, or None when none came within `timeout_s`; DeviceLost when the device failed."""
        ...

    def trigger(self) -> None:
        """Fire the software trigger; DeviceLost when the device failed."""
        ...

    def responsive(self) -> bool:
        """Whether the device still answers and still streams to us (asked when the stream went silent)."""
        ...

    def close(self) -> None: ...


class RecoveringStream:
    """Frames from a device session that is reopened, with capped exponential backoff, whenever the device
    is lost; counts reconnects, underruns and stale events in `health`.

    The first session is opened at construction, so a wrong address or setting fails before the camera
    loop starts; iterate once, or close it."""

    def __init__(
        self,
        camera: str,
        open_session: Callable[[], DeviceSession],
        settings: GenICamSettings,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        self.camera = camera
        self.health = SourceHealth()
        self._open_session = open_session
        self._settings = settings
        self._should_stop = should_stop or (lambda: False)
        try:
            self._session: DeviceSession | None = open_session()
        except DeviceLost as exc:
            raise SourceError(str(exc)) from exc

    def __iter__(self) -> Iterator[SourceFrame]:
        ids = FrameIdTracker()
        stalled = False
        try:
            while not self._should_stop():
                session = self._session if self._session is not None else self._reopen()
                if session is None:
                    return
                try:
                    grab = self._next(session)
                except DeviceLost as exc:
                    self._lose(str(exc))
                    continue
                if grab is None:
                    if not stalled:
                        stalled = True
                        self.health.stale_events += 1
                        log_event(
                            logger,
                            logging.INFO,
                            "camera_stream_stale",
                            camera=self.camera,
                            timeout_s=self._settings.frame_timeout_s,
                        )
                    if not session.responsive():
                        self._lose(
                            f"no frame for {self._settings.frame_timeout_s} s and the device does not answer"
                        )
                    continue
                stalled = False
                self.health.underruns += ids.missing(grab.frame_id)
                if grab.image is None:
                    self.health.underruns += 1
                    if grab.frame_id is None:
                        ids.lost_without_id += 1
                    continue
                yield SourceFrame(grab.image, frame_id=grab.frame_id, t_source_ns=grab.t_source_ns)
        finally:
            self.close()

    def _next(self, session: DeviceSession) -> Grab | None:
        if self._settings.trigger == "software":
            session.trigger()
        return session.grab(self._settings.frame_timeout_s)

    def _lose(self, error: str) -> None:
        log_event(logger, logging.WARNING, "camera_lost", camera=self.camera, error=error)
        self.close()

    def _reopen(self) -> DeviceSession | None:
        """A new session once the device is back, or None when told to stop while waiting for it."""
        attempt = 0
        while not self._should_stop():
            delay = backoff_delay(attempt, self._settings.reconnect_first_s, self._settings.reconnect_max_s)
            if self._sleep(delay):
                return None
            try:
                self._session = self._open_session()
            except DeviceLost as exc:
                attempt += 1
                log_event(
                    logger,
                    logging.INFO,
                    "camera_reconnect_failed",
                    camera=self.camera,
                    attempt=attempt,
                    error=str(exc),
                )
                continue
            self.health.reconnects += 1
            log_event(logger, logging.WARNING, "camera_reconnected", camera=self.camera, attempts=attempt + 1)
            return self._session
        return None

    def _sleep(self, seconds: float) -> bool:
        """Wait `seconds`, looking at the stop condition every 50 ms; True when told to stop."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self._should_stop():
                return True
            time.sleep(min(0.05, left))
        return self._should_stop()

    def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            session.close()
