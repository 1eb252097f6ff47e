"""Receive stage: bus → `receive.validate` → per-camera queues (back-pressure or supersede).

Owns the bus socket and the queues it fills. Counts what it takes off the bus (`received`), what breaks the
contract (`malformed`) and frames lost before they reached it (`dropped`: `seq_gap` from the cameras'
sequence numbers, `superseded` in a latest-mode queue).
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from edge_inspect.bus.contracts import ContractError
from edge_inspect.inspector.batching import CameraQueues
from edge_inspect.inspector.receive import validate
from edge_inspect.inspector.stages.base import Stage, reject

if TYPE_CHECKING:
    from edge_inspect.bus.security import ServerAuth
    from edge_inspect.inspector.config import BusConfig
    from edge_inspect.sinks.metrics import InspectorMetrics

POLL_MS = 100


class SeqTracker:
    """Per-camera sequence numbers: a jump forward is frames lost before they reached us."""

    def __init__(self) -> None:
        self._last: dict[str, int] = {}

    def __contains__(self, camera_id: str) -> bool:
        return camera_id in self._last

    def __len__(self) -> int:
        return len(self._last)

    def gap(self, camera_id: str, seq: int) -> int:
        last = self._last.get(camera_id)
        self._last[camera_id] = seq
        if last is None or seq <= last:
            # First frame, or the camera restarted and began counting again.
            return 0
        return seq - last - 1


class ReceiveStage(Stage):
    """Binds `bind` at once (so `receiver.endpoint` is known before start); `stop` ends the loop, and
    `done` is set once nothing more will be queued."""

    name = "receive"

    def __init__(
        self,
        bus: BusConfig,
        queue_depth: int,
        metrics: InspectorMetrics,
        zmq_context: Any,
        stop: threading.Event,
        auth: ServerAuth | None = None,
    ) -> None:
        from edge_inspect.bus.transport import FrameReceiver

        super().__init__()
        self.receiver = FrameReceiver(
            bus.bind,
            context=zmq_context,
            max_message_bytes=int(bus.max_message_mb * 1024 * 1024),
            auth=auth,
        )
        self.queues = CameraQueues(queue_depth, self.count_drop)
        self.done = threading.Event()
        self._metrics = metrics
        self._stop = stop
        self._seq = SeqTracker()
        self._max_cameras = bus.max_cameras

    def run(self) -> None:
        try:
            while not self._stop.is_set():
                parts = self.receiver.recv(timeout_ms=POLL_MS)
                if parts is not None:
                    with self.working():
                        self.take_guarded(parts)
        finally:
            self.done.set()

    def take_guarded(self, parts: list[memoryview]) -> None:
        """`take`, with any unexpected failure turned into a counted, logged refusal of that one message."""
        try:
            self.take(parts)
        except Exception as exc:  # one message must never stop the line
            self._metrics.stage_error(self.name)
            self.tally.add("stage_errors", self.name)
            error = ContractError("internal_error", f"receiving the message failed: {exc!r}")
            reject(self._metrics, self.tally, self.rejections, error, None)

    def take(self, parts: list[memoryview]) -> None:
        """One message off the bus: refused, or queued for its camera (blocking while a lossless queue is
        full)."""
        try:
            frame = validate(parts, time.time_ns())
            self._admit(frame.header.camera_id)
        except ContractError as exc:
            reject(self._metrics, self.tally, self.rejections, exc, None)
            return
        camera = frame.header.camera_id
        self._metrics.frame_received(camera)
        self.tally.add("received")
        lost = self._seq.gap(camera, frame.header.seq)
        if lost:
            self.count_drop(camera, "seq_gap", lost)
        self.queues.put(frame, self._stop)
        self._metrics.set_queue_depth(camera, self.queues.depths().get(camera, 0))

    def _admit(self, camera_id: str) -> None:
        """Every camera id costs a queue, sequence state and metric series: only `max_cameras` of them."""
        if camera_id not in self._seq and len(self._seq) >= self._max_cameras:
            raise ContractError(
                "too_many_cameras",
                f"camera {camera_id!r} would be camera number {len(self._seq) + 1}; this inspector keeps "
                f"state for {self._max_cameras} (bus.max_cameras): raise the limit if the line has more",
            )

    def count_drop(self, camera_id: str, reason: str, count: int = 1) -> None:
        self._metrics.frame_dropped(camera_id, reason, count)
        self.tally.add("dropped", reason, count)

    def close(self) -> None:
        self.receiver.close()
