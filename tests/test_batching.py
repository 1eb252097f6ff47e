from __future__ import annotations

import threading
import time
from collections import deque

import pytest

from edge_inspect.bus.contracts import FrameHeader
from edge_inspect.inspector.batching import CameraQueues, take_round_robin
from edge_inspect.inspector.receive import ReceivedFrame


def frame(camera: str, seq: int, delivery: str = "lossless") -> ReceivedFrame:
    header = FrameHeader(camera, seq, "st", 0, 1, 1, 1, delivery=delivery)
    return ReceivedFrame(header, memoryview(b"\x00"), 0)


def test_round_robin_is_fair_across_cameras() -> None:
    queues = {"a": deque(frame("a", i) for i in range(5)), "b": deque(frame("b", i) for i in range(2))}
    taken = take_round_robin(queues, start=1, limit=5)
    assert [(f.header.camera_id, f.header.seq) for f in taken] == [
        ("b", 0),
        ("a", 0),
        ("b", 1),
        ("a", 1),
        ("a", 2),
    ]
    assert take_round_robin({}, 0, 3) == []


def test_batch_closes_at_max_size_or_max_wait() -> None:
    drops: list = []
    queues = CameraQueues(depth=100, on_drop=lambda c, r: drops.append((c, r)))
    stop = threading.Event()
    for i in range(10):
        queues.put(frame("a", i), stop)
    assert len(queues.next_batch(max_batch=4, max_wait_s=1.0)) == 4
    t0 = time.monotonic()
    assert len(queues.next_batch(max_batch=100, max_wait_s=0.05)) == 6
    assert time.monotonic() - t0 < 0.5
    assert queues.next_batch(max_batch=4, max_wait_s=0.01, poll_s=0.01) == []
    assert drops == []


def test_latest_mode_keeps_only_the_newest_and_counts_superseded() -> None:
    drops: list = []
    queues = CameraQueues(depth=8, on_drop=lambda c, r: drops.append((c, r)))
    stop = threading.Event()
    for i in range(5):
        queues.put(frame("cam", i, "latest"), stop)
    batch = queues.next_batch(8, 0.0)
    assert [f.header.seq for f in batch] == [4]
    assert drops == [("cam", "superseded")] * 4


def test_lossless_mode_blocks_the_producer_until_the_worker_takes_frames() -> None:
    queues = CameraQueues(depth=2, on_drop=lambda c, r: pytest.fail("lossless must not drop"))
    stop = threading.Event()
    queues.put(frame("cam", 0), stop)
    queues.put(frame("cam", 1), stop)
    done = threading.Event()
    producer = threading.Thread(target=lambda: (queues.put(frame("cam", 2), stop), done.set()))
    producer.start()
    assert not done.wait(0.2), "a full lossless queue must block the receiver (back-pressure)"
    assert [f.header.seq for f in queues.next_batch(1, 0.0)] == [0]
    assert done.wait(2.0)
    producer.join()
    assert [f.header.seq for f in queues.next_batch(8, 0.0)] == [1, 2]
