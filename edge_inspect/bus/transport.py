"""The frame bus: cameras PUSH two-part frame messages, the inspector PULLs them. Both ends, no torch.

Cameras connect and the inspector binds, so one inspector serves many cameras and a camera survives an
inspector restart (ZeroMQ reconnects). Pixel buffers travel without copies on either end: the sender hands
ZeroMQ a view of the numpy array and the receiver returns views of ZeroMQ's own message buffers.

A socket belongs to one thread; give each camera thread its own FrameSender.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from types import TracebackType

import numpy as np
import zmq

from edge_inspect.bus.contracts import DELIVERIES, FrameHeader, encode_frame
from edge_inspect.bus.security import ClientKeys, ServerAuth
from edge_inspect.logs import log_event

logger = logging.getLogger(__name__)

# Lossless: a short queue, so a slow inspector pushes back on the camera within a few frames instead of
# hiding seconds of latency in buffers.
LOSSLESS_SNDHWM = 4
# Latest: room for one frame only; when it is still queued, the new frame is the one that loses.
LATEST_SNDHWM = 1
# Latest: a small kernel send buffer too. Left to the OS, it grows to megabytes and hides a dozen stale
# full-size frames between the camera and the inspector; 64 KiB still fills a gigabit link.
LATEST_SNDBUF = 64 * 1024
DEFAULT_RCVHWM = 4
# Time to flush queued frames on close; a stopped camera should not hang on a vanished inspector.
DEFAULT_LINGER_MS = 1000
# The largest frame message accepted: a 24 MP 16-bit mono frame with room to spare. A bigger camera
# raises it (bus.max_message_mb); anything larger is a fault or an attack, refused before it is buffered.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# How often a blocked lossless send looks at its stop check.
STOP_POLL_MS = 50


@dataclass
class SenderStats:
    """Counters of one FrameSender. `dropped` counts frames not handed to the bus: in latest mode because
    the inspector was behind, in lossless mode only when a stop interrupted a blocked send."""

    sent: int = 0
    dropped: int = 0
    backpressure_events: int = 0
    backpressure_seconds: float = 0.0


def _context_or_own(context: zmq.Context | None) -> tuple[zmq.Context, bool]:
    if context is not None:
        return context, False
    return zmq.Context(), True


class FrameSender:
    """Camera end: a PUSH socket connected to the inspector.

    `lossless` blocks while the inspector is behind (every frame arrives, the camera slows down);
    `latest` never blocks and drops the frame that does not fit (the inspector always sees recent frames).
    `should_stop` lets a blocked lossless send give up at shutdown.
    """

    def __init__(
        self,
        endpoint: str,
        delivery: str = "lossless",
        context: zmq.Context | None = None,
        *,
        should_stop: Callable[[], bool] | None = None,
        sndhwm: int | None = None,
        linger_ms: int = DEFAULT_LINGER_MS,
        keys: ClientKeys | None = None,
    ) -> None:
        if delivery not in DELIVERIES:
            raise ValueError(f"delivery {delivery!r} is not one of {DELIVERIES}")
        self.endpoint = endpoint
        self.delivery = delivery
        self._should_stop = should_stop
        self._stats = SenderStats()
        self._context, self._owns_context = _context_or_own(context)
        self._socket = self._context.socket(zmq.PUSH)
        self._socket.setsockopt(zmq.LINGER, linger_ms)
        if delivery == "latest":
            self._socket.setsockopt(zmq.SNDHWM, LATEST_SNDHWM if sndhwm is None else sndhwm)
            self._socket.setsockopt(zmq.SNDBUF, LATEST_SNDBUF)
            # Queue only on live connections: frames queued for an absent inspector would be stale on arrival.
            self._socket.setsockopt(zmq.IMMEDIATE, 1)
        else:
            self._socket.setsockopt(zmq.SNDHWM, LOSSLESS_SNDHWM if sndhwm is None else sndhwm)
        try:
            if keys is not None:
                keys.apply(self._socket)
            self._socket.connect(endpoint)
        except zmq.ZMQError as exc:
            self.close()
            raise ValueError(
                f"cannot connect the frame bus to {endpoint!r} ({exc}); use tcp://HOST:PORT or ipc:///path"
            ) from exc

    @property
    def stats(self) -> SenderStats:
        """A snapshot; the sender keeps counting."""
        return replace(self._stats)

    def send(self, header: FrameHeader, payload: np.ndarray | bytes) -> bool:
        """Queue one frame. True when ZeroMQ took it, False when it was dropped.

        The payload's buffer is shared with ZeroMQ until the frame is on the wire: do not write to the
        array after sending it.
        """
        parts = encode_frame(header, payload)
        if self._try_send(parts):
            self._stats.sent += 1
            return True
        if self.delivery == "latest":
            self._stats.dropped += 1
            log_event(logger, logging.DEBUG, "frame_dropped", camera_id=header.camera_id, seq=header.seq)
            return False
        return self._send_blocking(parts, header)

    def _try_send(self, parts: Sequence[bytes | memoryview]) -> bool:
        try:
            # Multipart sends are atomic: the high-water mark is checked on the first part only.
            self._socket.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return False
        return True

    def _send_blocking(self, parts: Sequence[bytes | memoryview], header: FrameHeader) -> bool:
        self._stats.backpressure_events += 1
        started = time.perf_counter()
        try:
            while True:
                if self._should_stop is not None and self._should_stop():
                    self._stats.dropped += 1
                    log_event(
                        logger,
                        logging.INFO,
                        "frame_abandoned_at_stop",
                        camera_id=header.camera_id,
                        seq=header.seq,
                    )
                    return False
                if self._socket.poll(STOP_POLL_MS, zmq.POLLOUT) and self._try_send(parts):
                    self._stats.sent += 1
                    return True
        finally:
            blocked = time.perf_counter() - started
            self._stats.backpressure_seconds += blocked
            log_event(
                logger,
                logging.DEBUG,
                "backpressure",
                camera_id=header.camera_id,
                seq=header.seq,
                blocked_s=round(blocked, 6),
            )

    def close(self) -> None:
        """Close the socket, waiting up to the linger time for queued frames to leave."""
        self._socket.close()
        if self._owns_context:
            self._context.term()

    def __enter__(self) -> FrameSender:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class FrameReceiver:
    """Inspector end: a PULL socket bound to `endpoint`, fair-queuing frames from every camera.

    Bind to `tcp://127.0.0.1:*` (or `tcp://*:*`) for a free port; `endpoint` then names the real one.
    A message larger than `max_message_bytes` is refused by ZeroMQ itself (the peer is disconnected)
    before any of it is buffered here. With `auth`, only allow-listed CURVE clients can connect.
    """

    def __init__(
        self,
        endpoint: str,
        context: zmq.Context | None = None,
        rcvhwm: int = DEFAULT_RCVHWM,
        *,
        linger_ms: int = 0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        auth: ServerAuth | None = None,
    ) -> None:
        self._context, self._owns_context = _context_or_own(context)
        self._socket = self._context.socket(zmq.PULL)
        self._socket.setsockopt(zmq.RCVHWM, rcvhwm)
        self._socket.setsockopt(zmq.LINGER, linger_ms)
        self._socket.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        if auth is not None:
            auth.apply(self._socket)
        try:
            self._socket.bind(endpoint)
        except zmq.ZMQError as exc:
            self.close()
            raise OSError(
                f"cannot bind the frame bus to {endpoint!r} ({exc}); is another inspector already using it? "
                "Pick a free port or stop the other process"
            ) from exc
        self.endpoint: str = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)

    def recv(self, timeout_ms: int = 1000) -> list[memoryview] | None:
        """The parts of the next message as zero-copy views, or None after `timeout_ms` (-1: wait forever).

        The parts are not validated here; each view keeps its ZeroMQ message alive while referenced.
        """
        if not self._socket.poll(timeout_ms, zmq.POLLIN):
            return None
        frames = self._socket.recv_multipart(flags=zmq.NOBLOCK, copy=False)
        return [frame.buffer for frame in frames]

    def close(self) -> None:
        self._socket.close()
        if self._owns_context:
            self._context.term()

    def __enter__(self) -> FrameReceiver:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
