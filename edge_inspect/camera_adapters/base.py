"""The camera loop shared by every source: pace, stamp, encode and publish frames on the frame bus.

`frame_message` is the pure core (image in, wire header and payload out); `run_camera` is the thin loop
around it that owns the clock and the socket.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Protocol

import cv2
import numpy as np

from edge_inspect.bus.contracts import CHANNELS, DELIVERIES, DTYPES, ENCODINGS, FrameHeader
from edge_inspect.bus.security import ClientKeys
from edge_inspect.bus.transport import FrameSender
from edge_inspect.logs import log_event

logger = logging.getLogger(__name__)


class SourceError(RuntimeError):
    """A frame source that cannot deliver frames; the message says what to check."""


@dataclass(frozen=True)
class SourceFrame:
    """One captured image: (H, W) or (H, W, C) uint8/uint16, BGR when it has three channels."""

    image: np.ndarray
    part_id: str | None = None


class FrameSource(Protocol):
    def __iter__(self) -> Iterator[SourceFrame]: ...


@dataclass(frozen=True)
class CameraConfig:
    """How one camera publishes. `fps` 0 sends as fast as the source and the bus allow; `loop` is read by
    sources that can replay (folders, video files). `max_frames` and `seconds` bound the run."""

    camera_id: str
    station: str
    endpoint: str
    delivery: str = "lossless"
    fps: float = 10.0
    encoding: str = "raw"
    jpeg_quality: int = 90
    loop: bool = False
    max_frames: int | None = None
    seconds: float | None = None
    # CURVE keys when the inspector requires authenticated cameras.
    keys: ClientKeys | None = None

    def __post_init__(self) -> None:
        if not self.camera_id:
            raise ValueError("camera_id must not be empty; give each camera a stable name such as 'cam-1'")
        if self.delivery not in DELIVERIES:
            raise ValueError(f"delivery {self.delivery!r} is not one of {DELIVERIES}")
        if self.encoding not in ENCODINGS:
            raise ValueError(f"encoding {self.encoding!r} is not one of {ENCODINGS}")
        if not (self.fps >= 0 and math.isfinite(self.fps)):
            raise ValueError(f"fps={self.fps} must be a finite number >= 0 (0: as fast as possible)")
        if not 0 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality={self.jpeg_quality} must lie in 0..100")
        if self.max_frames is not None and self.max_frames <= 0:
            raise ValueError(f"max_frames={self.max_frames} must be positive (leave it unset for no limit)")
        if self.seconds is not None and self.seconds <= 0:
            raise ValueError(f"seconds={self.seconds} must be positive (leave it unset for no limit)")


@dataclass(frozen=True)
class CameraStats:
    """What one run did. `achieved_fps` is the capture rate between the first and the last frame."""

    captured: int
    sent: int
    dropped: int
    backpressure_events: int
    backpressure_seconds: float
    elapsed_s: float
    achieved_fps: float


def frame_message(
    image: np.ndarray,
    config: CameraConfig,
    seq: int,
    t_capture_ns: int,
    part_id: str | None,
) -> tuple[FrameHeader, np.ndarray]:
    """The header and payload that carry `image` on the bus; the payload is the array itself when raw."""
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    channels = image.shape[2] if image.ndim == 3 else 1
    if image.ndim not in (2, 3) or channels not in CHANNELS:
        raise ValueError(
            f"camera {config.camera_id}: image of shape {image.shape} is neither mono (H, W) nor BGR "
            "(H, W, 3); convert it in the source"
        )
    if str(image.dtype) not in DTYPES:
        raise ValueError(
            f"camera {config.camera_id}: pixel type {image.dtype} is not one of {DTYPES}; "
            "convert it in the source"
        )
    payload = image
    if config.encoding == "jpeg":
        if image.dtype != np.uint8:
            raise ValueError(
                f"camera {config.camera_id}: {image.dtype} images cannot be JPEG-encoded; use encoding 'raw'"
            )
        ok, payload = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, config.jpeg_quality])
        if not ok:
            raise ValueError(f"camera {config.camera_id}: OpenCV failed to JPEG-encode frame {seq}")
    header = FrameHeader(
        camera_id=config.camera_id,
        seq=seq,
        station=config.station,
        t_capture_ns=t_capture_ns,
        width=image.shape[1],
        height=image.shape[0],
        channels=channels,
        dtype=str(image.dtype),
        encoding=config.encoding,
        part_id=part_id,
        delivery=config.delivery,
    )
    return header, payload


def next_slot(index: int, elapsed_s: float, fps: float) -> int:
    """The schedule slot for the frame after slot `index`, `elapsed_s` into the run.

    Slots sit on a fixed grid (slot k at k / fps) so timing errors never accumulate. A camera that fell
    more than a frame behind skips the slots already past instead of bursting to catch up, as a hardware
    trigger would.
    """
    return max(index + 1, math.floor(elapsed_s * fps))


def run_camera(source: FrameSource, config: CameraConfig, stop: threading.Event) -> CameraStats:
    """Publish frames from `source` until `stop` is set, a limit is reached or the source runs out."""
    captured = 0
    first_capture = last_capture = 0.0
    frames = iter(source)
    log_event(logger, logging.INFO, "camera_started", **asdict(config))
    with FrameSender(config.endpoint, config.delivery, should_stop=stop.is_set, keys=config.keys) as sender:
        started = time.monotonic()
        slot = 0
        try:
            while not stop.is_set() and (config.max_frames is None or captured < config.max_frames):
                if config.fps > 0:
                    offset = slot / config.fps
                    if config.seconds is not None and offset >= config.seconds:
                        break
                    stop.wait(max(0.0, started + offset - time.monotonic()))
                    if stop.is_set():
                        break
                elif config.seconds is not None and time.monotonic() - started >= config.seconds:
                    break
                frame = next(frames, None)
                if frame is None:
                    log_event(logger, logging.INFO, "source_exhausted", camera_id=config.camera_id)
                    break
                last_capture = time.monotonic()
                if captured == 0:
                    first_capture = last_capture
                # Every captured frame takes a sequence number, dropped ones too, so the inspector sees gaps.
                header, payload = frame_message(frame.image, config, captured, time.time_ns(), frame.part_id)
                captured += 1
                sender.send(header, payload)
                if config.fps > 0:
                    slot = next_slot(slot, time.monotonic() - started, config.fps)
        finally:
            # Release what the source holds (a capture device, a file) even when the loop stops early.
            close = getattr(frames, "close", None)
            if close is not None:
                close()
        elapsed = time.monotonic() - started
        bus = sender.stats
    span = last_capture - first_capture
    stats = CameraStats(
        captured=captured,
        sent=bus.sent,
        dropped=bus.dropped,
        backpressure_events=bus.backpressure_events,
        backpressure_seconds=round(bus.backpressure_seconds, 6),
        elapsed_s=round(elapsed, 6),
        achieved_fps=round((captured - 1) / span, 3) if captured > 1 and span > 0 else 0.0,
    )
    log_event(logger, logging.INFO, "camera_stopped", camera_id=config.camera_id, **asdict(stats))
    return stats
