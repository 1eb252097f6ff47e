"""Receive stage: bus → `receive.validate` → per-camera queues (credit for lossless, supersede for latest),
and the acknowledgements back to the cameras once their frames' results are committed.

Owns the bus socket (a ROUTER) and the queues it fills. Counts what it takes off the bus (`received`), what
breaks the contract (`malformed`), replays of frames it already has (`duplicate`: in the pipeline, or
already recorded; acknowledged, never inspected twice) and frames lost before they reached it (`dropped`:
`seq_gap` from the cameras' sequence numbers, across inspector restarts too, and `superseded` in a
latest-mode queue).
"""

from __future__ import annotations

import queue
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter

from edge_inspect.bus.contracts import ContractError, InspectionResult, parse_header, result_id_of
from edge_inspect.inspector.batching import CameraQueues
from edge_inspect.inspector.receive import validate
from edge_inspect.inspector.stages.base import Stage, reject

if TYPE_CHECKING:
    from edge_inspect.bus.security import ServerAuth
    from edge_inspect.inspector.config import BusConfig
    from edge_inspect.sinks.metrics import InspectorMetrics
    from edge_inspect.sinks.record_store import RecordStore

# Short, so acknowledgements queued by the record stage go out promptly: the socket is this thread's alone.
POLL_MS = 20
# After a stop, how long acknowledgements of what is still being recorded are sent for.
ACK_FLUSH_S = 10.0


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


class PendingFrames:
    """Lossless frames accepted and not yet acknowledged (their results not yet committed), by result id.
    Pure: `recorded` answers whether a result id is in the record store."""

    NEW, IN_PIPELINE, RECORDED = "new", "in_pipeline", "recorded"

    def __init__(self) -> None:
        self._pending: dict[str, tuple[str, int]] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def classify(self, camera_id: str, seq: int, t_capture_ns: int, recorded: Any) -> str:
        """NEW (now pending), IN_PIPELINE (a replay of a pending frame: its ack follows its commit) or
        RECORDED (a replay of a committed frame: acknowledge it again at once)."""
        result_id = result_id_of(camera_id, t_capture_ns, seq)
        if result_id in self._pending:
            return self.IN_PIPELINE
        if recorded(result_id):
            return self.RECORDED
        self._pending[result_id] = (camera_id, seq)
        return self.NEW

    def committed(self, result_id: str) -> tuple[str, int] | None:
        """The (camera, seq) to acknowledge for a committed result; None when it needs no ack (latest)."""
        return self._pending.pop(result_id, None)


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
        self.queues = CameraQueues(queue_depth, self.count_drop)
        self.done = threading.Event()
        self._metrics = metrics
        self._stop = stop
        self._seq = SeqTracker()
        self._cameras: set[str] = set()
        self._max_cameras = bus.max_cameras
        self._db_path = db_path
        self._store: RecordStore | None = None
        self._pending = PendingFrames()
        self._commits: queue.SimpleQueue[tuple[list[InspectionResult], set[str]] | None] = queue.SimpleQueue()
        self._duplicates = Counter(
            "edgeinspect_frames_duplicate",
            "Replayed frames the inspector already had (in its pipeline or recorded): acknowledged, not "
            "inspected again; by where they were recognised.",
            ["camera", "where"],
            registry=metrics.registry,
        )

    # -- the record stage's side (its thread) --------------------------------------------------------
    def committed(self, results: list[InspectionResult], inserted: set[str]) -> None:
        """Results now committed (`inserted`: those new; the rest were already recorded)."""
        self._commits.put((results, inserted))

    def record_finished(self) -> None:
        self._commits.put(None)

    # -- this thread ---------------------------------------------------------------------------------
    def run(self) -> None:
        try:
            self._open_store()
            while not self._stop.is_set():
                self._send_acks()
                incoming = self.receiver.recv_routed(timeout_ms=POLL_MS)
                if incoming is not None:
                    with self.working():
                        self.take_guarded(incoming.parts, incoming.route)
        finally:
            self.done.set()
            try:
                self._ack_until_recorded()
            finally:
                if self._store is not None:
                    self._store.close()

    def _open_store(self) -> None:
        if self._db_path is None:
            return
        from edge_inspect.sinks.record_store import RecordStore

        self._store = RecordStore(self._db_path)
        self._seq = SeqTracker(self._store.camera_seqs())

    def _ack_until_recorded(self) -> None:
        """What was accepted before the stop is still being recorded: acknowledge it as it commits, so the
        cameras need not resend it to the next inspector."""
        deadline = time.monotonic() + ACK_FLUSH_S
        while time.monotonic() < deadline:
            try:
                item = self._commits.get(timeout=POLL_MS / 1000)
            except queue.Empty:
                continue
            if item is None:
                return
            self._acknowledge(*item)

    def _send_acks(self) -> None:
        while True:
            try:
                item = self._commits.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                self._acknowledge(*item)

    def _acknowledge(self, results: list[InspectionResult], inserted: set[str]) -> None:
        seqs: dict[str, list[int]] = defaultdict(list)
        for result in results:
            if result.result_id not in inserted:
                self._duplicates.labels(camera=result.camera_id, where="record").inc()
            frame = self._pending.committed(result.result_id)
            if frame is not None:
                seqs[frame[0]].append(frame[1])
        for camera, camera_seqs in seqs.items():
            self.receiver.ack(camera, camera_seqs)

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
            self._ack_rejected(parts, route)
            return
        header = frame.header
        camera = header.camera_id
        if route is not None:
            self.receiver.remember(camera, route)
        self._metrics.frame_received(camera)
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
        kind = self._pending.classify(camera, seq, t_capture_ns, recorded)
        if kind == PendingFrames.NEW:
            return False
        self.tally.add("duplicate", kind)
        self._duplicates.labels(camera=camera, where=kind).inc()
        if kind == PendingFrames.RECORDED:
            self.receiver.ack(camera, [seq])
        return True

    def _ack_rejected(self, parts: list[memoryview], route: bytes | None) -> None:
        if route is None or len(parts) != 2:
            return
        try:
            header = parse_header(parts[0])
        except ContractError:
            return  # no seq to name: the camera's own checks make this a bug, not a replay loop
        if header.delivery == "lossless":
            self.receiver.ack(header.camera_id, rejected=[header.seq], route=route)

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
