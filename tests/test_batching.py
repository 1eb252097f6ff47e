from __future__ import annotations

import threading
from collections import deque

import pytest

from edge_inspect.bus.contracts import FrameHeader
from edge_inspect.inspector.batching import (
    CameraQueues,
    InferenceSlot,
    evictions_to_fit,
    hold_s,
    take_round_robin,
)
from edge_inspect.inspector.receive import ReceivedFrame

# Generous: these bound a test that fails, they are never what a passing test measures.
PATIENCE_S = 10.0


def frame(camera: str, seq: int, delivery: str = "lossless", nbytes: int = 1) -> ReceivedFrame:
    header = FrameHeader(camera, seq, "st", 0, nbytes, 1, 1, delivery=delivery)
    return ReceivedFrame(header, memoryview(bytes(nbytes)), 0)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


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


def test_an_idle_inference_gets_whatever_is_queued_at_once() -> None:
    for queued in (1, 3, 7):
        assert hold_s(queued, max_batch=8, oldest_wait_s=0.0, max_wait_s=0.010, inference_busy=False) == 0


def test_a_full_batch_goes_at_once_even_while_inference_is_busy() -> None:
    assert hold_s(8, max_batch=8, oldest_wait_s=0.0, max_wait_s=0.010, inference_busy=True) == 0
    assert hold_s(20, max_batch=8, oldest_wait_s=0.0, max_wait_s=0.010, inference_busy=True) == 0


def test_while_inference_is_busy_a_batch_waits_for_company_up_to_max_wait() -> None:
    assert hold_s(1, 8, oldest_wait_s=0.0, max_wait_s=0.010, inference_busy=True) == pytest.approx(0.010)
    assert hold_s(3, 8, oldest_wait_s=0.004, max_wait_s=0.010, inference_busy=True) == pytest.approx(0.006)
    assert hold_s(3, 8, oldest_wait_s=0.010, max_wait_s=0.010, inference_busy=True) == 0
    assert hold_s(3, 8, oldest_wait_s=0.5, max_wait_s=0.010, inference_busy=True) == 0
    assert hold_s(3, 8, oldest_wait_s=0.0, max_wait_s=0.0, inference_busy=True) == 0
    # A clock that stepped back never makes a part wait longer than max_wait.
    assert hold_s(1, 8, oldest_wait_s=-5.0, max_wait_s=0.010, inference_busy=True) == pytest.approx(0.010)


def test_batch_closes_at_max_size_and_an_idle_inference_takes_the_rest_at_once() -> None:
    drops: list = []
    queues = CameraQueues(depth=100, on_drop=lambda c, r: drops.append((c, r)))
    stop = threading.Event()
    for i in range(10):
        queues.put(frame("a", i), stop)
    # max_wait is far beyond PATIENCE_S: returning at all shows that neither batch waited for it.
    assert len(queues.next_batch(max_batch=4, max_wait_s=1000.0)) == 4
    assert len(queues.next_batch(max_batch=100, max_wait_s=1000.0)) == 6
    assert queues.next_batch(max_batch=4, max_wait_s=0.01, poll_s=0.01) == []
    assert drops == []


def test_a_batch_held_while_inference_is_busy_goes_once_its_oldest_part_waited_max_wait() -> None:
    clock = FakeClock()
    queues = CameraQueues(depth=100, on_drop=lambda c, r: None, clock=clock)
    stop = threading.Event()
    queues.put(frame("a", 0), stop)
    clock.now += 0.5
    queues.put(frame("b", 0), stop)
    # By the queues' clock the first part has waited 0.5 s: a batch while busy goes at once.
    batch = queues.next_batch(max_batch=8, max_wait_s=0.5, inference_busy=lambda: True)
    assert sorted(f.header.camera_id for f in batch) == ["a", "b"]


def test_while_inference_is_busy_the_batch_grows_until_inference_goes_idle() -> None:
    clock = FakeClock()  # never advances: only inference going idle can release the batch
    queues = CameraQueues(depth=100, on_drop=lambda c, r: None, clock=clock)
    slot: InferenceSlot[str] = InferenceSlot(on_idle=queues.wake)
    stop = threading.Event()
    slot.put("batch-0")
    assert slot.get() == "batch-0" and slot.busy()
    queues.put(frame("a", 0), stop)
    batches: list[list[ReceivedFrame]] = []
    consumer = threading.Thread(
        target=lambda: batches.append(queues.next_batch(8, max_wait_s=60.0, inference_busy=slot.busy))
    )
    consumer.start()
    for seq in range(1, 3):
        queues.put(frame("a", seq), stop)
    # Still held: inference is busy, the batch is not full and by the clock no time has passed.
    consumer.join(0.05)
    assert consumer.is_alive()
    slot.done()  # inference finished and nothing waits for it: the held batch goes now
    consumer.join(PATIENCE_S)
    assert not consumer.is_alive()
    assert [f.header.seq for f in batches[0]] == [0, 1, 2]


def test_while_inference_is_busy_the_batch_goes_when_it_is_full() -> None:
    queues = CameraQueues(depth=100, on_drop=lambda c, r: None, clock=FakeClock())
    stop = threading.Event()
    queues.put(frame("a", 0), stop)
    batches: list[list[ReceivedFrame]] = []
    consumer = threading.Thread(
        target=lambda: batches.append(queues.next_batch(4, max_wait_s=60.0, inference_busy=lambda: True))
    )
    consumer.start()
    for seq in range(1, 6):
        queues.put(frame("a", seq), stop)
    consumer.join(PATIENCE_S)
    assert not consumer.is_alive()
    assert [f.header.seq for f in batches[0]] == [0, 1, 2, 3]
    assert queues.total() == 2


def test_inference_slot_is_busy_while_running_or_holding_a_batch() -> None:
    idle_calls: list[int] = []
    slot: InferenceSlot[str] = InferenceSlot(on_idle=lambda: idle_calls.append(1))
    assert not slot.busy()
    slot.put("one")
    assert slot.busy()  # a prepared batch waits for inference
    assert slot.get() == "one"
    assert slot.busy()  # inference is running it
    slot.put("two")
    slot.done()
    assert slot.busy() and idle_calls == []  # the next batch was already waiting: not idle
    assert slot.get() == "two"
    slot.done()
    assert not slot.busy() and idle_calls == [1]
    slot.put(None)
    assert slot.get() is None and not slot.busy()


def test_inference_slot_holds_one_batch_and_blocks_the_producer_until_it_is_taken() -> None:
    slot: InferenceSlot[int] = InferenceSlot()
    slot.put(1)
    done = threading.Event()
    producer = threading.Thread(target=lambda: (slot.put(2), done.set()))
    producer.start()
    assert not done.wait(0.1), "a second batch must wait until inference takes the first"
    assert slot.get() == 1
    assert done.wait(PATIENCE_S)
    producer.join()
    assert slot.get() == 2


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


def test_evictions_to_fit_counts_the_oldest_frames_that_must_go() -> None:
    assert evictions_to_fit(10, held=0, budget=None, evictable=[]) == 0  # no budget
    assert evictions_to_fit(10, held=90, budget=100, evictable=[]) == 0  # fits as it is
    assert evictions_to_fit(10, held=95, budget=100, evictable=[]) is None  # lossless: wait
    assert evictions_to_fit(10, held=95, budget=100, evictable=[3, 4, 50]) == 2  # 95 - 7 + 10 <= 100
    assert evictions_to_fit(10, held=95, budget=100, evictable=[3]) is None  # the rest is not evictable
    # Into empty queues (or once every evictable frame is gone) a frame always fits, even one larger than
    # the whole budget: it would otherwise wait for ever.
    assert evictions_to_fit(500, held=0, budget=100, evictable=[]) == 0
    assert evictions_to_fit(500, held=30, budget=100, evictable=[10, 20]) == 2


def test_a_lossless_frame_beyond_the_byte_budget_waits_until_frames_are_taken() -> None:
    queues = CameraQueues(
        depth=100, on_drop=lambda c, r: pytest.fail("lossless must not drop"), max_bytes=250
    )
    stop = threading.Event()
    queues.put(frame("a", 0, nbytes=100), stop)
    queues.put(frame("b", 0, nbytes=100), stop)
    assert queues.held_bytes() == 200
    done = threading.Event()
    producer = threading.Thread(target=lambda: (queues.put(frame("a", 1, nbytes=100), stop), done.set()))
    producer.start()
    assert not done.wait(0.2), "a frame beyond the byte budget must block the receiver (back-pressure)"
    assert len(queues.next_batch(1, 0.0)) == 1
    assert done.wait(PATIENCE_S)
    producer.join()
    assert queues.held_bytes() == 200
    assert len(queues.next_batch(8, 0.0)) == 2
    assert queues.held_bytes() == 0


def test_a_latest_frame_beyond_the_budget_drops_the_oldest_waiting_latest_frame() -> None:
    clock = FakeClock()
    drops: list = []
    queues = CameraQueues(depth=8, on_drop=lambda c, r: drops.append((c, r)), clock=clock, max_bytes=300)
    stop = threading.Event()
    for camera in ("old", "mid", "new"):
        clock.now += 1
        queues.put(frame(camera, 0, "latest", nbytes=100), stop)
    assert drops == [] and queues.held_bytes() == 300
    queues.put(frame("late", 0, "latest", nbytes=150), stop)
    # 150 more bytes: the two stalest latest frames go, each counted under its own camera.
    assert drops == [("old", "memory_budget"), ("mid", "memory_budget")]
    assert queues.held_bytes() == 250
    assert sorted(f.header.camera_id for f in queues.next_batch(8, 0.0)) == ["late", "new"]
    assert queues.held_bytes() == 0


def test_a_latest_frame_supersedes_its_own_older_frame_before_the_budget_is_asked() -> None:
    drops: list = []
    queues = CameraQueues(depth=8, on_drop=lambda c, r: drops.append((c, r)), max_bytes=100)
    stop = threading.Event()
    queues.put(frame("cam", 0, "latest", nbytes=100), stop)
    queues.put(frame("cam", 1, "latest", nbytes=100), stop)
    assert drops == [("cam", "superseded")]
    assert queues.held_bytes() == 100


def test_lossless_frames_are_never_dropped_for_the_budget_a_latest_frame_waits_for_them() -> None:
    drops: list = []
    queues = CameraQueues(depth=8, on_drop=lambda c, r: drops.append((c, r)), max_bytes=200)
    stop = threading.Event()
    queues.put(frame("ll", 0, nbytes=100), stop)
    queues.put(frame("ll", 1, nbytes=100), stop)
    done = threading.Event()
    producer = threading.Thread(
        target=lambda: (queues.put(frame("lt", 0, "latest", nbytes=100), stop), done.set())
    )
    producer.start()
    assert not done.wait(0.2), "lossless frames hold the budget: the latest frame must wait, not evict"
    assert [f.header.seq for f in queues.next_batch(1, 0.0)] == [0]
    assert done.wait(PATIENCE_S)
    producer.join()
    assert drops == []
    assert queues.held_bytes() == 200


def test_a_frame_larger_than_the_budget_still_enters_empty_queues_and_stop_releases_a_waiter() -> None:
    queues = CameraQueues(depth=8, on_drop=lambda c, r: None, max_bytes=10)
    stop = threading.Event()
    queues.put(frame("a", 0, nbytes=50), stop)
    assert queues.held_bytes() == 50
    stop.set()  # at shutdown nothing received is refused: the frame is queued over the budget
    queues.put(frame("a", 1, nbytes=50), stop)
    assert queues.total() == 2
    with pytest.raises(ValueError, match="at least one byte"):
        CameraQueues(depth=8, on_drop=lambda c, r: None, max_bytes=0)
