"""Receive stage: bus → `receive.validate` → per-camera queues (credit for lossless, supersede for latest),
and the acknowledgements back to the cameras once their frames' results are committed.

Owns the bus socket (a ROUTER) and the queues it fills. Counts what it takes off the bus (`received`), what
breaks the contract (`malformed`), replays of frames it already has (`duplicate`: in the pipeline, or
already recorded; acknowledged, never inspected twice) and frames lost before they reached it (`dropped`:
`seq_gap` from the cameras' sequence numbers, across inspector restarts too, and `superseded` in a
latest-mode queue).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_inspect.bus.contracts import ContractError
from edge_inspect.inspector.batching import DEFAULT_MAX_QUEUED_BYTES, CameraQueues
from edge_inspect.inspector.camera_health import CameraBook
from edge_inspect.inspector.receive import validate
from edge_inspect.inspector.stages.acks import Acknowledgements
from edge_inspect.inspector.stages.base import Stage, reject

if TYPE_CHECKING:
    from edge_inspect.bus.security import ServerAuth
    from edge_inspect.inspector.config import BusConfig
    from edge_inspect.sinks.metrics import InspectorMetrics
    from edge_inspect.sinks.record_store import RecordStore

# Short, so acknowledgements queued by the record stage go out promptly: the socket is this thread's alone.
POLL_MS = 20


class SeqTracker:
    """Per-camera sequence numbers: a jump forward is frames lost before they reached us.

    With capture times it also tells a replayed frame (an older capture: no gap, the mark stays) from a
    camera that restarted its count (a newer capture with a lower seq). `persisted` seeds it with each
    camera's newest committed frame, so a gap across an inspector restart is counted too."""

    def __init__(self, persisted: dict[str, tuple[int, int]] | None = None) -> None:
        self._last: dict[str, tuple[int, int | None]] = dict(persisted or {})

    def __contains__(self, camera_id: str) -> bool:
        return camera_id in self._last

    def __len__(self) -> int:
        return len(self._last)

    def gap(self, camera_id: str, seq: int, t_capture_ns: int | None = None) -> int:
        last = self._last.get(camera_id)
        if last is None:
            self._last[camera_id] = (seq, t_capture_ns)
            return 0
        last_seq, last_t = last
        if seq > last_seq:
            self._last[camera_id] = (seq, t_capture_ns)
            return seq - last_seq - 1
        if t_capture_ns is not None and last_t is not None and t_capture_ns <= last_t:
            return 0  # a replay of an older frame: nothing lost, and the mark stays where it is
        self._last[camera_id] = (seq, t_capture_ns)  # the camera restarted and began counting again
        return 0


class ReceiveStage(Stage):
    """Binds `bind` at once (so `receiver.endpoint` is known before start); `stop` ends the reading, and
    `done` is set once nothing more will be queued. With `db_path` (the inspector's record store), frames
    already recorded are recognised when replayed and sequence numbers continue across restarts. The
    record stage reports commits through `committed` / `record_finished`; the acks go out from here."""

    name = "receive"

    def __init__(
        self,
        bus: BusConfig,
        queue_depth: int,
        metrics: InspectorMetrics,
        zmq_context: Any,
        stop: threading.Event,
        auth: ServerAuth | None = None,
        db_path: Path | None = None,
        max_queued_bytes: int | None = DEFAULT_MAX_QUEUED_BYTES,
        cameras: CameraBook | None = None,
    ) -> None:
        from edge_inspect.bus.transport import FrameReceiver

        super().__init__()
        # Credit = the queue depth: a lossless camera never has more frames unacknowledged than its queue
        # holds, so the receiver never blocks on a full queue (the old back-pressure path).
        self.receiver = FrameReceiver(
            bus.bind,
            context=zmq_context,
            max_message_bytes=int(bus.max_message_mb * 1024 * 1024),
            auth=auth,
            credit=queue_depth,
            auto_ack=False,
        )
        self.queues = CameraQueues(queue_depth, self.count_drop, max_bytes=max_queued_bytes)
        self.done = threading.Event()
        self._metrics = metrics
        self._stop = stop
        self._seq = SeqTracker()
        self._cameras: set[str] = set()
        self._max_cameras = bus.max_cameras
        self._db_path = db_path
        self._store: RecordStore | None = None
        self.acks = Acknowledgements(self.receiver, metrics)
        self.cameras = cameras if cameras is not None else CameraBook()

    # -- this thread ---------------------------------------------------------------------------------
    def run(self) -> None:
        try:
            self._open_store()
            while not self._stop.is_set():
                self.acks.send_ready()
                incoming = self.receiver.recv_routed(timeout_ms=POLL_MS)
                if incoming is not None:
                    with self.working():
                        self.take_guarded(incoming.parts, incoming.route)
        finally:
            self.done.set()
            try:
                self.acks.flush_until_recorded()
            finally:
                if self._store is not None:
                    self._store.close()

    def _open_store(self) -> None:
        if self._db_path is None:
            return
        from edge_inspect.sinks.record_store import RecordStore

        self._store = RecordStore(self._db_path)
        self._seq = SeqTracker(self._store.camera_seqs())

    def take_guarded(self, parts: list[memoryview], route: bytes | None = None) -> None:
        """`take`, with any unexpected failure turned into a counted, logged refusal of that one message."""
        try:
            self.take(parts, route)
        except Exception as exc:  # one message must never stop the line
            self._metrics.stage_error(self.name)
            self.tally.add("stage_errors", self.name)
            error = ContractError("internal_error", f"receiving the message failed: {exc!r}")
            reject(self._metrics, self.tally, self.rejections, error, None)

    def take(self, parts: list[memoryview], route: bytes | None = None) -> None:
        """One message off the bus: refused (a lossless one acknowledged as rejected, so the camera does not
        resend it), recognised as a duplicate (acknowledged when recorded), or queued for its camera."""
        try:
            frame = validate(parts, time.time_ns())
            self._admit(frame.header.camera_id)
        except ContractError as exc:
            reject(self._metrics, self.tally, self.rejections, exc, None)
            self.acks.rejected(parts, route)
            return
        header = frame.header
        camera = header.camera_id
        if route is not None:
            self.receiver.remember(camera, route)
        self._metrics.frame_received(camera)
        self.cameras.seen(header, frame.t_received_ns)
        self.tally.add("received")
        if header.delivery == "lossless" and self._duplicate(camera, header.seq, header.t_capture_ns):
            return
        lost = self._seq.gap(camera, header.seq, header.t_capture_ns)
        if lost:
            self.count_drop(camera, "seq_gap", lost)
        self.queues.put(frame, self._stop)
        self._metrics.set_queue_depth(camera, self.queues.depths().get(camera, 0))

    def _duplicate(self, camera: str, seq: int, t_capture_ns: int) -> bool:
        recorded = self._store.is_recorded if self._store is not None else (lambda _: False)
        kind = self.acks.duplicate(camera, seq, t_capture_ns, recorded)
        if kind is not None:
            self.tally.add("duplicate", kind)
        return kind is not None

    def _admit(self, camera_id: str) -> None:
        """Every camera id costs a queue, sequence state and metric series: only `max_cameras` of them."""
        if camera_id not in self._cameras and len(self._cameras) >= self._max_cameras:
            raise ContractError(
                "too_many_cameras",
                f"camera {camera_id!r} would be camera number {len(self._cameras) + 1}; this inspector keeps "
                f"state for {self._max_cameras} (bus.max_cameras): raise the limit if the line has more",
            )
        self._cameras.add(camera_id)

    def count_drop(self, camera_id: str, reason: str, count: int = 1) -> None:
        self._metrics.frame_dropped(camera_id, reason, count)
        self.tally.add("dropped", reason, count)

    def close(self) -> None:
        self.receiver.close()
