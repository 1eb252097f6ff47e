"""Acknowledgements of lossless frames: which accepted frames still wait for their results' commit
(`PendingFrames`, pure), and the queue through which the record stage reports commits so that the receive
stage, which owns the socket, sends the acks (`Acknowledgements`). A frame is acknowledged only once its
result is committed; a replay of a frame already in the pipeline or already recorded is recognised here.
"""

from __future__ import annotations

import queue
import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter

from edge_inspect.bus.contracts import ContractError, InspectionResult, parse_header, result_id_of

if TYPE_CHECKING:
    from edge_inspect.bus.transport import FrameReceiver
    from edge_inspect.sinks.metrics import InspectorMetrics

# After a stop, how long acknowledgements of what is still being recorded are sent for.
ACK_FLUSH_S = 10.0
WAIT_S = 0.02


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


class Acknowledgements:
    """The receive stage's acks. `committed` and `record_finished` are called from the record stage's
    thread; everything else from the receive stage's, which owns `receiver`."""

    def __init__(self, receiver: FrameReceiver, metrics: InspectorMetrics) -> None:
        self._receiver = receiver
        self.pending = PendingFrames()
        self._commits: queue.SimpleQueue[tuple[list[InspectionResult], set[str]] | None] = queue.SimpleQueue()
        self.duplicates = Counter(
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

    # -- the receive stage's side --------------------------------------------------------------------
    def send_ready(self) -> None:
        """Acknowledge everything committed since the last call."""
        while True:
            try:
                item = self._commits.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                self._acknowledge(*item)

    def flush_until_recorded(self) -> None:
        """What was accepted before the stop is still being recorded: acknowledge it as it commits, so the
        cameras need not resend it to the next inspector."""
        deadline = time.monotonic() + ACK_FLUSH_S
        while time.monotonic() < deadline:
            try:
                item = self._commits.get(timeout=WAIT_S)
            except queue.Empty:
                continue
            if item is None:
                return
            self._acknowledge(*item)

    def _acknowledge(self, results: list[InspectionResult], inserted: set[str]) -> None:
        seqs: dict[str, list[int]] = defaultdict(list)
        for result in results:
            if result.result_id not in inserted:
                self.duplicates.labels(camera=result.camera_id, where="record").inc()
            frame = self.pending.committed(result.result_id)
            if frame is not None:
                seqs[frame[0]].append(frame[1])
        for camera, camera_seqs in seqs.items():
            self._receiver.ack(camera, camera_seqs)

    def duplicate(self, camera: str, seq: int, t_capture_ns: int, recorded: Any) -> str | None:
        """Where a replayed lossless frame was recognised (acknowledging a recorded one again at once), or
        None for a new frame, now pending."""
        kind = self.pending.classify(camera, seq, t_capture_ns, recorded)
        if kind == PendingFrames.NEW:
            return None
        self.duplicates.labels(camera=camera, where=kind).inc()
        if kind == PendingFrames.RECORDED:
            self._receiver.ack(camera, [seq])
        return kind

    def rejected(self, parts: list[memoryview], route: bytes | None) -> None:
        """Acknowledge a refused lossless frame as rejected, so its camera stops resending it."""
        if route is None or len(parts) != 2:
            return
        try:
            header = parse_header(parts[0])
        except ContractError:
            return  # no seq to name: the camera's own checks make this a bug, not a replay loop
        if header.delivery == "lossless":
            self._receiver.ack(header.camera_id, rejected=[header.seq], route=route)
