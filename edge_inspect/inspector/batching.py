"""Batch stage: bounded per-camera queues and latency-aware dynamic batching.

A `lossless` camera's queue blocks the receiver when full, so back-pressure travels over ZeroMQ to the
camera (which counts it). A `latest` camera's queue holds only its newest frame and counts every frame it
supersedes. Batches take frames round-robin across cameras so one busy camera cannot starve others.

All queues together also hold at most `max_bytes` of frame payload (`evictions_to_fit`), so memory is
bounded in bytes whatever the frame size and camera count: a lossless frame that does not fit waits
(back-pressure, as a full queue does); a latest frame makes room by dropping the oldest waiting latest
frames of other cameras, counted as `memory_budget`, and waits only if lossless frames hold the rest.

When a batch goes is decided like Triton's dynamic batcher (`hold_s`): when inference is idle, whatever
is queued goes at once, so a part at a low rate never waits for company; while inference is busy, a batch
grows from the frames that queue meanwhile, up to `max_batch`, and `max_wait_s` caps how long its oldest
frame waits for company. "Busy" is the infer stage running a batch or holding a prepared one
(`InferenceSlot`), so preprocessing of the next batch still overlaps inference of the current one.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Generic, TypeVar

from edge_inspect.inspector.receive import ReceivedFrame

DropCallback = Callable[[str, str], None]
T = TypeVar("T")

# The queues' byte budget when none is given; the same as the default of `batching.max_queued_mb`.
DEFAULT_MAX_QUEUED_BYTES = 512 * 1024 * 1024
# Drop reasons counted by the queues (`dropped{reason=...}`).
SUPERSEDED = "superseded"
MEMORY_BUDGET = "memory_budget"


def evictions_to_fit(size: int, held: int, budget: int | None, evictable: Sequence[int]) -> int | None:
    """How many of the `evictable` frames (their sizes, oldest first) must go for a new frame of `size`
    bytes to fit beside the `held` bytes (which include the evictable ones); None when it does not fit
    even with all of them gone (the caller waits). No budget (None): 0.

    A frame always fits into empty queues, even one larger than the whole budget: otherwise it would wait
    for ever (the bus's `max_message_mb` bounds a single frame).
    """
    if budget is None:
        return 0
    for count in range(len(evictable) + 1):
        if held == 0 or held + size <= budget:
            return count
        if count < len(evictable):
            held -= evictable[count]
    return None


def hold_s(
    queued: int, max_batch: int, oldest_wait_s: float, max_wait_s: float, inference_busy: bool
) -> float:
    """How much longer to hold a batch open for more frames; 0 means dispatch now.

    Pure policy, given `queued` >= 1 frames whose oldest has waited `oldest_wait_s`: a full batch goes
    at once; so does anything when inference is idle (nothing would be gained by waiting); while it is
    busy, the batch waits for company until its oldest frame has waited `max_wait_s`.
    """
    if queued >= max_batch or not inference_busy:
        return 0.0
    return min(max_wait_s, max(0.0, max_wait_s - oldest_wait_s))


def take_round_robin(queues: dict[str, deque[T]], start: int, limit: int) -> list[T]:
    """Up to `limit` items, one per camera per turn, beginning with the camera at index `start`."""
    names = list(queues)
    taken: list[T] = []
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


@dataclass(frozen=True)
class _Queued:
    frame: ReceivedFrame
    since: float  # the queues' clock when it was queued

    @property
    def nbytes(self) -> int:
        return self.frame.payload.nbytes

    @property
    def latest(self) -> bool:
        return self.frame.header.delivery == "latest"


class CameraQueues:
    """Thread-safe per-camera frame queues shared by the receiver (producer) and the prepare stage
    (consumer), bounded in frames per camera (`depth`) and in payload bytes overall (`max_bytes`; None: no
    byte bound). `clock` is injectable so the batching policy can be tested without real waiting."""

    def __init__(
        self,
        depth: int,
        on_drop: DropCallback,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_bytes: int | None = DEFAULT_MAX_QUEUED_BYTES,
    ) -> None:
        if depth < 1:
            raise ValueError("queue depth must be at least 1")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError(f"a byte budget of {max_bytes}: give at least one byte, or None for none")
        self._depth = depth
        self._max_bytes = max_bytes
        self._on_drop = on_drop
        self._clock = clock
        self._queues: dict[str, deque[_Queued]] = {}
        self._bytes = 0
        self._cond = threading.Condition()
        self._next_start = 0

    def put(self, frame: ReceivedFrame, stop: threading.Event) -> None:
        """Queue `frame`, blocking while a lossless frame has no room (its camera's queue is full, or the
        byte budget is spent) or a latest frame finds the budget held by lossless frames. At `stop` the
        frame is queued regardless, so nothing already received is lost at shutdown."""
        camera = frame.header.camera_id
        with self._cond:
            queue = self._queues.setdefault(camera, deque())
            if frame.header.delivery == "latest":
                # Newest frame wins: a latest-mode camera never has more than one frame waiting.
                while queue:
                    self._drop(camera, queue.popleft(), SUPERSEDED)
            # Blocking here stops the receiver reading the socket: that is the back-pressure path.
            while not stop.is_set() and not self._make_room(frame, queue):
                self._cond.wait(0.05)
            queue.append(_Queued(frame, self._clock()))
            self._bytes += frame.payload.nbytes
            self._cond.notify_all()

    def _make_room(self, frame: ReceivedFrame, queue: deque[_Queued]) -> bool:
        """Whether `frame` may be queued now; for a latest frame, drops the older latest frames that must
        go for it to fit in the byte budget."""
        if frame.header.delivery != "latest":
            fits = evictions_to_fit(frame.payload.nbytes, self._bytes, self._max_bytes, []) == 0
            return len(queue) < self._depth and fits
        # A latest frame supersedes everything its camera had queued, so latest frames are only ever at the
        # head of a queue: one look per camera, however deep the lossless queues are.
        # Oldest first: a latest camera wants its newest frame seen, so the stalest frame loses.
        waiting = sorted((q[0] for q in self._queues.values() if q and q[0].latest), key=attrgetter("since"))
        count = evictions_to_fit(
            frame.payload.nbytes, self._bytes, self._max_bytes, [item.nbytes for item in waiting]
        )
        if count is None:
            return False
        for item in waiting[:count]:
            camera = item.frame.header.camera_id
            self._queues[camera].popleft()
            self._drop(camera, item, MEMORY_BUDGET)
        return True

    def _drop(self, camera: str, item: _Queued, reason: str) -> None:
        self._bytes -= item.nbytes
        self._on_drop(camera, reason)

    def next_batch(
        self,
        max_batch: int,
        max_wait_s: float,
        poll_s: float = 0.1,
        inference_busy: Callable[[], bool] = lambda: False,
    ) -> list[ReceivedFrame]:
        """The next batch, dispatched by `hold_s`; empty if nothing arrived within `poll_s` (so the caller
        can check for stop). Call `wake()` when inference becomes idle, so a held batch goes at once."""
        with self._cond:
            if not self._cond.wait_for(self._has_frames, timeout=poll_s):
                return []
            while True:
                queued = sum(len(queue) for queue in self._queues.values())
                oldest = min(queue[0].since for queue in self._queues.values() if queue)
                hold = hold_s(queued, max_batch, self._clock() - oldest, max_wait_s, inference_busy())
                if hold <= 0:
                    break
                # Woken by a new frame or by inference going idle; either way the policy is asked again.
                self._cond.wait(hold)
            batch = [queued.frame for queued in self._take(max_batch)]
            self._cond.notify_all()
            return batch

    def wake(self) -> None:
        """Have a waiting `next_batch` ask the policy again (inference has become idle)."""
        with self._cond:
            self._cond.notify_all()

    def depths(self) -> dict[str, int]:
        with self._cond:
            return {camera: len(queue) for camera, queue in self._queues.items()}

    def total(self) -> int:
        with self._cond:
            return sum(len(queue) for queue in self._queues.values())

    def held_bytes(self) -> int:
        """Payload bytes of every frame waiting now (at most `max_bytes`, but for one oversized frame)."""
        with self._cond:
            return self._bytes

    def _has_frames(self) -> bool:
        return any(self._queues.values())

    def _take(self, limit: int) -> list[_Queued]:
        taken = take_round_robin(self._queues, self._next_start, limit)
        self._bytes -= sum(item.nbytes for item in taken)
        if self._queues:
            self._next_start = (self._next_start + 1) % len(self._queues)
        return taken


class InferenceSlot(Generic[T]):
    """The prepare → infer hand-over: room for one prepared batch, and whether inference is busy (running a
    batch or holding a prepared one). `on_idle` is called, outside the slot's lock, when inference finishes
    a batch and nothing is waiting for it: the batcher's cue to dispatch what it holds (`CameraQueues.wake`).
    """

    def __init__(self, on_idle: Callable[[], None] = lambda: None) -> None:
        self._cond = threading.Condition()
        self._item: T | None = None
        self._full = False
        self._running = False
        self._on_idle = on_idle

    def put(self, item: T | None) -> None:
        """Hand over a batch (None: no more); blocks while the previous one has not been taken."""
        with self._cond:
            self._cond.wait_for(lambda: not self._full)
            self._item, self._full = item, True
            self._cond.notify_all()

    def get(self) -> T | None:
        """The next batch for inference (None: no more); inference counts as running until `done()`."""
        with self._cond:
            self._cond.wait_for(lambda: self._full)
            item, self._item, self._full = self._item, None, False
            self._running = item is not None
            self._cond.notify_all()
            return item

    def done(self) -> None:
        """Inference has finished the batch it got."""
        with self._cond:
            self._running = False
            idle = not self._full
        if idle:
            self._on_idle()

    def busy(self) -> bool:
        with self._cond:
            return self._running or self._full
