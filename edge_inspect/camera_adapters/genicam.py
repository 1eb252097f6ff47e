"""What GigE Vision (Aravis) and GenTL (harvesters) cameras share: their settings, the pixel conversion, and
the recovering stream loop.

The core is pure: `to_image` turns a GenICam buffer into the frame contract's arrays (mono uint8/uint16, or
BGR uint8/uint16), `FrameIdTracker` reads lost frames from the camera's frame ids. `RecoveringStream` is the
thin loop around a device session: it waits for frames with a bounded timeout, counts what the device lost
(`SourceHealth`), notices a silent or vanished camera, and reopens it with capped exponential backoff until
it is back, checking its stop condition all along.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import cv2
import numpy as np

from edge_inspect.camera_adapters.base import (
    SourceError,
    SourceFrame,
    SourceHealth,
    backoff_delay,
    wait_or_stop,
)
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


def check_convertible(camera: str, pixel_format: str, offered: Iterable[str]) -> None:
    """Refuse a camera that streams a pixel format `to_image` does not read, naming those it offers that it
    does."""
    if pixel_format not in PIXEL_FORMATS:
        readable = sorted(set(offered) & set(PIXEL_FORMATS))
        raise SourceError(
            f"camera {camera} streams {pixel_format}, which we do not convert; set pixel_format to one of "
            f"{readable}"
        )


def check_in_range(camera: str, setting: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise SourceError(f"{setting}={value} is outside camera {camera}'s range {low}..{high}")


# GigE Vision 1.x block ids are 16 bits and skip 0: after 65535 comes 1.
GEV_BLOCK_ID_MAX = 0xFFFF


def frame_id_step(previous: int, current: int) -> int | None:
    """How far the camera's frame counter moved forward from `previous` to `current` (1: the next frame);
    None when `current` is not ahead: a late or repeated frame, or a counter that started again.

    16-bit ids wrap from 65535 to 1, so a step over the wrap is forward when it is under half the range."""
    if previous <= GEV_BLOCK_ID_MAX and current <= GEV_BLOCK_ID_MAX:
        step = current - previous if current > previous else GEV_BLOCK_ID_MAX - previous + current
        return step if 0 < step <= GEV_BLOCK_ID_MAX // 2 else None
    return current - previous if current > previous else None


class FrameIdTracker:
    """Frames lost between the frame ids of complete frames.

    An incomplete buffer is counted by itself (`lost_without_id`), never by its id (transport layers leave a
    stale or zero id in a failed buffer), and subtracted from the next gap so that no frame counts twice.
    After the device was reopened (`reopened`), ids that went on count what it produced meanwhile; ids that
    went back mean the camera started counting again (it was power-cycled): the count restarts there, and
    only the time can tell what was lost."""

    def __init__(self) -> None:
        self.last: int | None = None
        self.lost_without_id = 0
        self.reopened = False

    def missing(self, frame_id: int | None) -> int | None:
        """The frames lost before this one by their ids; None when the ids cannot tell: the first frame,
        a frame without an id, or a count that started again after a reopen."""
        if frame_id is None:
            return None
        step = None if self.last is None else frame_id_step(self.last, frame_id)
        if step is None:
            if self.last is None or self.reopened:
                self.last, self.lost_without_id, self.reopened = frame_id, 0, False
                return None
            return 0  # a late or repeated frame: nothing lost
        gap = max(0, step - 1 - self.lost_without_id)
        self.last, self.lost_without_id, self.reopened = frame_id, 0, False
        return gap


def frames_in_outage(outage_s: float, frame_rate: float | None) -> int:
    """The frames a free-running camera at `frame_rate` produced in an outage of `outage_s` between two
    frames we received (the next one would have come anyway); 0 when the rate is unknown."""
    if frame_rate is None:
        return 0
    return max(0, round(outage_s * frame_rate) - 1)


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
    """One buffer from the device: `image` None when it arrived incomplete (lost packets); the frame id and
    timestamp are the camera's, None when it has none."""

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
        self._closed = threading.Event()
        try:
            self._session: DeviceSession | None = open_session()
        except DeviceLost as exc:
            raise SourceError(str(exc)) from exc

    def __iter__(self) -> Iterator[SourceFrame]:
        ids = FrameIdTracker()
        stalled = False
        last_frame_at: float | None = None  # monotonic, when the last complete frame arrived
        outage_frames = 0  # what the camera would have sent while it was away, by the time
        try:
            while not self._stopping():
                session = self._session
                if session is None:
                    session = self._reopen()
                    if session is None:
                        return
                    ids.reopened = True
                    if last_frame_at is not None:
                        outage_frames = frames_in_outage(
                            time.monotonic() - last_frame_at, self._free_run_rate()
                        )
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
                if grab.image is None:
                    self.health.underruns += 1
                    ids.lost_without_id += 1
                    continue
                by_id = ids.missing(grab.frame_id)
                # Ids that went on across an outage count it exactly; otherwise the time does.
                self.health.underruns += outage_frames if by_id is None else by_id
                outage_frames, last_frame_at = 0, time.monotonic()
                yield SourceFrame(grab.image, frame_id=grab.frame_id, t_source_ns=grab.t_source_ns)
        finally:
            self.close()

    def _free_run_rate(self) -> float | None:
        """The rate at which the camera produces frames by itself; None when triggered or not configured."""
        return self._settings.frame_rate if self._settings.trigger == "free" else None

    def _next(self, session: DeviceSession) -> Grab | None:
        if self._settings.trigger == "software":
            session.trigger()
        return session.grab(self._settings.frame_timeout_s)

    def _lose(self, error: str) -> None:
        log_event(logger, logging.WARNING, "camera_lost", camera=self.camera, error=error)
        self._release()

    def _reopen(self) -> DeviceSession | None:
        """A new session once the device is back, or None when told to stop while waiting for it."""
        attempt = 0
        while not self._stopping():
            delay = backoff_delay(attempt, self._settings.reconnect_first_s, self._settings.reconnect_max_s)
            if wait_or_stop(delay, self._should_stop, self._closed):
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

    def _stopping(self) -> bool:
        return self._closed.is_set() or self._should_stop()

    def _release(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            session.close()

    def close(self) -> None:
        """End the iteration and release the device: a reconnection wait ends at once."""
        self._closed.set()
        self._release()
