"""Batch stage: bounded per-camera queues and micro-batching (up to B frames or T ms, whichever first).

A `lossless` camera's queue blocks the receiver when full, so back-pressure travels over ZeroMQ to the
camera (which counts it). A `latest` camera's queue holds only its newest frame and counts every frame it
supersedes. Batches take frames round-robin across cameras so one busy camera cannot starve others.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from edge_inspect.inspector.receive import ReceivedFrame

DropCallback = Callable[[str, str], None]


def take_round_robin(queues: dict[str, deque[ReceivedFrame]], start: int, limit: int) -> list[ReceivedFrame]:
    """Up to `limit` frames, one per camera per turn, beginning with the camera at index `start`."""
    names = list(queues)
    taken: list[ReceivedFrame] = []
    if not names:
        return taken
    while len(taken) < limit:
        progressed = False
        for offset in range(len(names)):
            queue = queues[names[(start + offset) % len(names)]]
            if queue and len(taken) < limit:
                taken.append(queue.popleft())
                progressed = True
        if not progressed:
            break
    return taken


class CameraQueues:
    """Thread-safe per-camera frame queues shared by the receiver (producer) and the worker (consumer)."""

    def __init__(self, depth: int, on_drop: DropCallback) -> None:
        if depth < 1:
            raise ValueError("queue depth must be at least 1")
        self._depth = depth
        self._on_drop = on_drop
        self._queues: dict[str, deque[ReceivedFrame]] = {}
        self._cond = threading.Condition()
        self._next_start = 0

    def put(self, frame: ReceivedFrame, stop: threading.Event) -> None:
        camera = frame.header.camera_id
        with self._cond:
            queue = self._queues.setdefault(camera, deque())
            if frame.header.delivery == "latest":
                # Newest frame wins: a latest-mode camera never has more than one frame waiting.
                while queue:
                    queue.popleft()
                    self._on_drop(camera, "superseded")
            else:
                # Blocking here stops the receiver reading the socket: that is the back-pressure path.
                while len(queue) >= self._depth and not stop.is_set():
                    self._cond.wait(0.05)
            queue.append(frame)
            self._cond.notify_all()

    def next_batch(self, max_batch: int, max_wait_s: float, poll_s: float = 0.1) -> list[ReceivedFrame]:
        """The next batch; empty if nothing arrived within `poll_s` (so the caller can check for stop)."""
        with self._cond:
            if not self._cond.wait_for(self._has_frames, timeout=poll_s):
                return []
            deadline = time.monotonic() + max_wait_s
            batch = self._take(max_batch)
            while len(batch) < max_batch:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._cond.wait_for(self._has_frames, timeout=remaining):
                    break
                batch.extend(self._take(max_batch - len(batch)))
            self._cond.notify_all()
            return batch

    def depths(self) -> dict[str, int]:
        with self._cond:
            return {camera: len(queue) for camera, queue in self._queues.items()}

    def total(self) -> int:
        with self._cond:
            return sum(len(queue) for queue in self._queues.values())

    def _has_frames(self) -> bool:
        return any(self._queues.values())

    def _take(self, limit: int) -> list[ReceivedFrame]:
        taken = take_round_robin(self._queues, self._next_start, limit)
        if self._queues:
            self._next_start = (self._next_start + 1) % len(self._queues)
        return taken
