"""The camera loop shared by every source: pace, stamp, encode and publish frames on the frame bus.

`frame_message` is the pure core (image in, wire header and payload out); `run_camera` is the thin loop
around it that owns the clock and the socket. With a state directory, `SeqJournal` keeps each camera's next
sequence number and its unacknowledged frames on disk, so a gateway that was killed continues the count
(the inspector sees the gap) and reports the frames it lost (`lost_at_restart`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import quote

import cv2
import numpy as np

from edge_inspect.bus.contracts import CHANNELS, DELIVERIES, DTYPES, ENCODINGS, CameraHealth, FrameHeader
from edge_inspect.bus.security import ClientKeys
from edge_inspect.bus.transport import DEFAULT_REPLAY_BYTES, FrameSender, SenderStats
from edge_inspect.logs import log_event

logger = logging.getLogger(__name__)


class SourceError(RuntimeError):
    """A frame source that cannot deliver frames; the message says what to check."""


@dataclass(frozen=True)
class SourceFrame:
    """One captured image: (H, W) or (H, W, C) uint8/uint16, BGR when it has three channels.

    `frame_id` and `t_source_ns` are the camera's own frame id and timestamp (device clock), when it has
    them; they travel in the frame header beside the gateway's sequence number and capture time."""

    image: np.ndarray
    part_id: str | None = None
    frame_id: int | None = None
    t_source_ns: int | None = None


@dataclass
class SourceHealth:
    """Counters a source that talks to a device keeps (its `health` attribute); the gateway sends them with
    every frame (`FrameHeader.health`). See `bus.contracts.CameraHealth` for what each one counts."""

    reconnects: int = 0
    underruns: int = 0
    stale_events: int = 0


class FrameSource(Protocol):
    def __iter__(self) -> Iterator[SourceFrame]: ...


class PartIdFeed(Protocol):
    """Where part ids come from when the image itself does not carry one: a PLC counter or a barcode
    reader, the camera's frame counter (camera_adapters/part_ids.py). `take` is asked once per captured
    frame, with the camera's own frame id when it has one."""

    def take(self, t_capture_ns: int, frame_id: int | None = None) -> str | None: ...

    def close(self) -> None: ...


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
    # Lossless: bytes of frames kept until acknowledged; when full, capture waits.
    replay_bytes: int = DEFAULT_REPLAY_BYTES
    # Lossless: how long a finished run waits for its last frames to be acknowledged.
    drain_s: float = 30.0
    # Where the sequence journal lives (None: no journal; a restart begins again at seq 0).
    state_dir: Path | None = None

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
        if self.replay_bytes < 1:
            raise ValueError(f"replay_bytes={self.replay_bytes} must be positive")
        if not (self.drain_s >= 0 and math.isfinite(self.drain_s)):
            raise ValueError(f"drain_s={self.drain_s} must be a finite number >= 0")


@dataclass(frozen=True)
class CameraStats:
    """What one run did. `achieved_fps` is the capture rate between the first and the last frame.

    Lossless: `acked` frames are recorded by the inspector; `unacked` were still unacknowledged when the run
    ended (lost unless the inspector recorded them after all); `dropped` frames were given up at the camera
    (a stop while the replay buffer was full, or larger than the inspector accepts); `rejected` were refused
    by the inspector's contract checks. `backpressure_*` count the capture loop's waits (for credit, or for
    room in a full replay buffer: `replay_full_events`). `lost_at_restart`: frames a previous run of this
    gateway captured and had not had acknowledged when it was killed (seqs `first_seq - lost_at_restart`
    .. `first_seq - 1` at most; some may have been recorded, their acks still on the way).
    `reconnects` counts the bus connection's; `device_reconnects`, `underruns` and `stale_events` are the
    camera device's (`SourceHealth`), 0 for sources without a device."""

    captured: int
    sent: int
    dropped: int
    backpressure_events: int
    backpressure_seconds: float
    elapsed_s: float
    achieved_fps: float
    acked: int = 0
    resent: int = 0
    rejected: int = 0
    unacked: int = 0
    replay_full_events: int = 0
    reconnects: int = 0
    first_seq: int = 0
    lost_at_restart: int = 0
    device_reconnects: int = 0
    underruns: int = 0
    stale_events: int = 0


JOURNAL_VERSION = 1


class SeqJournal:
    """A gateway's memory across a kill: `next_seq` (the seq the next captured frame takes) and the frames
    captured and not yet acknowledged (`oldest_unacked`, `unacked`). Written, atomically (temporary file and
    rename), before each frame is sent and after acks free frames; not fsynced, so it survives the process
    being killed, not a power cut."""

    def __init__(self, state_dir: Path, camera_id: str) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.camera_id = camera_id
        self.path = state_dir / _journal_name(camera_id)

    def restore(self) -> tuple[int, int]:
        """(next_seq, lost): where to continue counting, and how many frames the last run left unacknowledged
        when it ended without a clean stop (0 after a clean stop: that run reported them itself)."""
        try:
            state = json.loads(self.path.read_text())
        except FileNotFoundError:
            return 0, 0
        except (OSError, ValueError) as exc:
            raise ValueError(
                f"camera state {self.path} is unreadable ({exc}); move it away to start counting from 0"
            ) from exc
        if state.get("v") != JOURNAL_VERSION or state.get("camera_id") != self.camera_id:
            raise ValueError(
                f"camera state {self.path} is not this camera's (v{JOURNAL_VERSION}); move it away"
            )
        return int(state["next_seq"]), int(state["unacked"])

    def write(self, next_seq: int, oldest_unacked: int | None, unacked: int) -> None:
        state = {
            "v": JOURNAL_VERSION,
            "camera_id": self.camera_id,
            "next_seq": next_seq,
            "oldest_unacked": oldest_unacked,
            "unacked": unacked,
        }
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.path)


def _journal_name(camera_id: str) -> str:
    """A file name for any camera id: readable when short, a hash keeps long ones distinct and bounded."""
    name = quote(camera_id, safe="-_")
    if len(name) > 100:
        name = f"{name[:60]}~{hashlib.sha256(camera_id.encode()).hexdigest()[:16]}"
    return f"{name}.seq.json"


def frame_message(
    image: np.ndarray,
    config: CameraConfig,
    seq: int,
    t_capture_ns: int,
    part_id: str | None,
    *,
    source_frame_id: int | None = None,
    t_source_ns: int | None = None,
    health: CameraHealth | None = None,
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
        source_frame_id=source_frame_id,
        t_source_ns=t_source_ns,
        health=health,
    )
    return header, payload


# How often a source waiting to reconnect looks at its stop condition.
STOP_POLL_S = 0.05


def wait_or_stop(seconds: float, should_stop: Callable[[], bool], closed: threading.Event) -> bool:
    """Wait `seconds`, looking at `should_stop` every 50 ms and waking at once when `closed` is set; True
    when told to stop (either way)."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if closed.wait(min(STOP_POLL_S, left)) or should_stop():
            return True
    return closed.is_set() or should_stop()


def backoff_delay(attempt: int, first_s: float, max_s: float) -> float:
    """The wait before reconnection attempt `attempt` (0-based): from `first_s`, doubling, up to `max_s`."""
    return min(max_s, first_s * 2 ** min(attempt, 32))


def next_slot(index: int, elapsed_s: float, fps: float) -> int:
    """The schedule slot for the frame after slot `index`, `elapsed_s` into the run.

    Slots sit on a fixed grid (slot k at k / fps) so timing errors never accumulate. A camera that fell
    more than a frame behind skips the slots already past instead of bursting to catch up, as a hardware
    trigger would.
    """
    return max(index + 1, math.floor(elapsed_s * fps))


class _Run:
    """One run's moving parts: the sender, the journal and the sequence counter."""

    def __init__(self, config: CameraConfig, stop: threading.Event) -> None:
        self.config = config
        self.journal = SeqJournal(config.state_dir, config.camera_id) if config.state_dir else None
        self.first_seq, self.lost = self.journal.restore() if self.journal else (0, 0)
        self.next_seq = self.first_seq
        if self.lost:
            log_event(
                logger,
                logging.WARNING,
                "frames_lost_at_restart",
                camera_id=config.camera_id,
                lost=self.lost,
                seqs_before=self.first_seq,
            )
        self.sender = FrameSender(
            config.endpoint,
            config.delivery,
            should_stop=stop.is_set,
            keys=config.keys,
            replay_bytes=config.replay_bytes,
            on_ack=self.save,
        )

    def save(self, extra_unacked: int = 0) -> None:
        """Journal the counter and the unacknowledged frames; `extra_unacked`: the frame about to be sent."""
        if self.journal is None:
            return
        oldest, unacked = self.sender.unacked()
        if oldest is None and extra_unacked:
            oldest = self.next_seq - 1
        self.journal.write(self.next_seq, oldest, unacked + extra_unacked)

    def send(self, header: FrameHeader, payload: np.ndarray) -> None:
        self.next_seq = header.seq + 1
        # Journalled before it can reach the wire: a kill after this line counts it lost, never unknown.
        lossless = self.config.delivery == "lossless"
        self.save(extra_unacked=1 if lossless else 0)
        if not self.sender.send(header, payload) and lossless:
            self.save()

    def idle(self, stop: threading.Event, seconds: float) -> None:
        """Wait for the next trigger; a lossless sender reads its acks meanwhile."""
        if self.config.delivery == "latest":
            stop.wait(max(0.0, seconds))
            return
        deadline = time.monotonic() + seconds
        while not stop.is_set() and (left := deadline - time.monotonic()) > 0:
            self.sender.pump(max(1, min(50, int(left * 1000))))

    def finish(self) -> None:
        """Lossless: wait for the last acks; frames still unacknowledged are reported by this run (stats)."""
        if self.config.delivery == "lossless":
            self.sender.drain(self.config.drain_s)
        if self.journal is not None:
            self.journal.write(self.next_seq, None, 0)


def run_camera(
    source: FrameSource, config: CameraConfig, stop: threading.Event, part_ids: PartIdFeed | None = None
) -> CameraStats:
    """Publish frames from `source` until `stop` is set, a limit is reached or the source runs out.

    A frame's part id is the source's own (a file name, a camera frame id) or else the next one from
    `part_ids` (a trigger source); the source's `health` counters, when it has them, go with every frame."""
    captured = 0
    device: SourceHealth | None = getattr(source, "health", None)
    first_capture = last_capture = 0.0
    frames = iter(source)
    log_event(logger, logging.INFO, "camera_started", **asdict(config))
    run = _Run(config, stop)
    with run.sender:
        started = time.monotonic()
        slot = 0
        try:
            while not stop.is_set() and (config.max_frames is None or captured < config.max_frames):
                if config.fps > 0:
                    offset = slot / config.fps
                    if config.seconds is not None and offset >= config.seconds:
                        break
                    run.idle(stop, started + offset - time.monotonic())
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
                seq = run.first_seq + captured
                t_capture_ns = time.time_ns()
                part_id = frame.part_id
                if part_id is None and part_ids is not None:
                    part_id = part_ids.take(t_capture_ns, frame.frame_id)
                captured += 1
                header, payload = frame_message(
                    frame.image,
                    config,
                    seq,
                    t_capture_ns,
                    part_id,
                    source_frame_id=frame.frame_id,
                    t_source_ns=frame.t_source_ns,
                    health=_health(captured, device),
                )
                run.send(header, payload)
                if config.fps > 0:
                    slot = next_slot(slot, time.monotonic() - started, config.fps)
            run.finish()
        finally:
            # Release what the source holds (a capture device, a file) even when the loop stops early.
            close = getattr(frames, "close", None)
            if close is not None:
                close()
        elapsed = time.monotonic() - started
        bus = run.sender.stats
    stats = _stats(captured, first_capture, last_capture, elapsed, bus, run, _health(captured, device))
    log_event(logger, logging.INFO, "camera_stopped", camera_id=config.camera_id, **asdict(stats))
    return stats


def _health(captured: int, device: SourceHealth | None) -> CameraHealth:
    if device is None:
        return CameraHealth(captured=captured)
    return CameraHealth(
        captured=captured,
        reconnects=device.reconnects,
        underruns=device.underruns,
        stale_events=device.stale_events,
    )


def _stats(
    captured: int,
    first_capture: float,
    last_capture: float,
    elapsed: float,
    bus: SenderStats,
    run: _Run,
    health: CameraHealth,
) -> CameraStats:
    span = last_capture - first_capture
    return CameraStats(
        captured=captured,
        sent=bus.sent,
        dropped=bus.dropped,
        backpressure_events=bus.backpressure_events,
        backpressure_seconds=round(bus.backpressure_seconds, 6),
        elapsed_s=round(elapsed, 6),
        achieved_fps=round((captured - 1) / span, 3) if captured > 1 and span > 0 else 0.0,
        acked=bus.acked,
        resent=bus.resent,
        rejected=bus.rejected,
        unacked=bus.unacked,
        replay_full_events=bus.replay_full_events,
        reconnects=bus.reconnects,
        first_seq=run.first_seq,
        lost_at_restart=run.lost,
        device_reconnects=health.reconnects,
        underruns=health.underruns,
        stale_events=health.stale_events,
    )
