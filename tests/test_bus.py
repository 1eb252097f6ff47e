"""The frame bus over real ZeroMQ sockets on loopback TCP with ephemeral ports."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import cv2
import numpy as np
import pytest

from edge_inspect.bus.contracts import FrameHeader, parse_header, raw_pixels
from edge_inspect.bus.transport import FrameReceiver, FrameSender, SenderStats

# Big enough that ZeroMQ takes the zero-copy path and that a few frames fill the socket buffers.
HEIGHT, WIDTH = 480, 640


def header(
    seq: int, channels: int = 3, dtype: str = "uint8", encoding: str = "raw", part_id: str | None = None
) -> FrameHeader:
    return FrameHeader(
        camera_id="cam-test",
        seq=seq,
        station="bench",
        t_capture_ns=time.time_ns(),
        width=WIDTH,
        height=HEIGHT,
        channels=channels,
        dtype=dtype,
        encoding=encoding,
        part_id=part_id,
    )


@pytest.fixture
def receiver() -> Iterator[FrameReceiver]:
    with FrameReceiver("tcp://127.0.0.1:*") as bound:
        yield bound


def test_receiver_reports_the_real_port(receiver: FrameReceiver) -> None:
    host, port = receiver.endpoint.rsplit(":", 1)
    assert host == "tcp://127.0.0.1"
    assert int(port) > 0


def test_receiver_refuses_an_endpoint_in_use(receiver: FrameReceiver) -> None:
    with pytest.raises(OSError, match="already using it"):
        FrameReceiver(receiver.endpoint)


def test_sender_refuses_a_malformed_endpoint() -> None:
    with pytest.raises(ValueError, match="tcp://HOST:PORT"):
        FrameSender("localhost:5555")


def test_raw_frames_round_trip_without_copies(receiver: FrameReceiver) -> None:
    rng = np.random.default_rng(0)
    bgr = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    mono16 = rng.integers(0, 65536, (HEIGHT, WIDTH), dtype=np.uint16)
    with FrameSender(receiver.endpoint, "lossless") as sender:
        assert sender.send(header(0, part_id="p-0"), bgr)
        assert sender.send(header(1, channels=1, dtype="uint16"), mono16)
        for seq, expected in ((0, bgr), (1, mono16[:, :, None])):
            parts = receiver.recv(timeout_ms=5000)
            assert parts is not None and len(parts) == 2
            assert all(isinstance(part, memoryview) for part in parts)
            received = parse_header(parts[0])
            assert received.seq == seq
            pixels = raw_pixels(received, parts[1])
            # A view onto ZeroMQ's message buffer, not a copy.
            assert not pixels.flags.owndata
            np.testing.assert_array_equal(pixels, expected)
        assert sender.stats.sent == 2
    assert receiver.recv(timeout_ms=50) is None


def test_jpeg_frames_round_trip(receiver: FrameReceiver) -> None:
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    gradient = ((xx + yy) % 256).astype(np.uint8)
    image = np.dstack([gradient, gradient[::-1], np.full_like(gradient, 90)])
    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    with FrameSender(receiver.endpoint, "lossless") as sender:
        sender.send(header(7, encoding="jpeg"), jpeg)
        parts = receiver.recv(timeout_ms=5000)
    assert parts is not None
    received = parse_header(parts[0])
    assert (received.encoding, received.shape) == ("jpeg", (HEIGHT, WIDTH, 3))
    assert bytes(parts[1]) == jpeg.tobytes()
    decoded = cv2.imdecode(np.frombuffer(parts[1], np.uint8), cv2.IMREAD_UNCHANGED)
    assert np.abs(decoded.astype(int) - image).mean() < 3


def test_latest_drops_and_counts_when_nobody_receives(tmp_path) -> None:
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    with FrameSender(f"ipc://{tmp_path / 'nobody'}", "latest") as sender:
        results = [sender.send(header(seq), image) for seq in range(20)]
        stats = sender.stats
    assert results == [False] * 20
    assert (stats.sent, stats.dropped, stats.backpressure_events) == (0, 20, 0)


def test_latest_drops_frames_a_stalled_receiver_cannot_take() -> None:
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    with (
        FrameReceiver("tcp://127.0.0.1:*", rcvhwm=1) as receiver,
        FrameSender(receiver.endpoint, "latest") as sender,
    ):
        before = _wait_until_connected(sender, receiver)
        started = time.monotonic()
        for seq in range(1, 41):
            sender.send(header(seq), image)
        never_blocked = time.monotonic() - started
        stats = sender.stats
        received = _drain(receiver)
    sent, dropped = stats.sent - before.sent, stats.dropped - before.dropped
    assert sent + dropped == 40
    # Socket buffers hold a handful of frames at most; everything after that is dropped, not queued.
    assert dropped >= 25
    assert stats.backpressure_events == 0
    assert never_blocked < 2.0
    assert received == sorted(received) and len(received) == sent


def test_lossless_pushes_back_on_a_slow_receiver_and_loses_nothing() -> None:
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    frames = 40
    received: list[int] = []
    with FrameReceiver("tcp://127.0.0.1:*", rcvhwm=1) as receiver:

        def slow_inspector() -> None:
            while len(received) < frames and (parts := receiver.recv(timeout_ms=5000)) is not None:
                received.append(parse_header(parts[0]).seq)
                time.sleep(0.01)

        reader = threading.Thread(target=slow_inspector)
        reader.start()
        with FrameSender(receiver.endpoint, "lossless") as sender:
            assert all(sender.send(header(seq), image) for seq in range(frames))
            stats = sender.stats
        reader.join(timeout=30)
    assert received == list(range(frames))
    assert (stats.sent, stats.dropped) == (frames, 0)
    assert stats.backpressure_events > 0
    assert stats.backpressure_seconds > 0.05


def test_a_full_replay_buffer_blocks_capture_and_a_stop_drops_counted(tmp_path) -> None:
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    stop = threading.Event()
    # Nobody binds: nothing is ever acknowledged, so the replay buffer (two frames) fills and capture waits.
    stopper = threading.Timer(0.2, stop.set)
    stopper.start()
    with FrameSender(
        f"ipc://{tmp_path / 'gone'}",
        "lossless",
        should_stop=stop.is_set,
        linger_ms=0,
        replay_bytes=2 * image.nbytes + 1024,
    ) as sender:
        results = [sender.send(header(seq), image) for seq in range(10)]
        stats = sender.stats
    stopper.join()
    assert results == [True, True] + [False] * 8
    assert (stats.sent, stats.dropped, stats.unacked, stats.acked) == (2, 8, 2, 0)
    assert stats.backpressure_events == stats.replay_full_events == 8
    assert stats.backpressure_seconds >= 0.15


def test_lossless_frames_are_resent_to_a_restarted_receiver_and_acked_once() -> None:
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    with FrameReceiver("tcp://127.0.0.1:*", auto_ack=False) as first:
        endpoint = first.endpoint
        with FrameSender(endpoint, "lossless") as sender:
            for seq in range(3):
                sender.send(header(seq), image)
            got = [parse_header(first.recv(timeout_ms=5000)[0]).seq for _ in range(3)]
            assert got == [0, 1, 2]
            first.ack("cam-test", [0])  # only the first is committed before the "crash"
            deadline = time.monotonic() + 5
            while sender.stats.acked < 1 and time.monotonic() < deadline:
                sender.pump(50)
            assert sender.stats.acked == 1
            first.close()
            with FrameReceiver(endpoint) as second:  # auto-acks: it records on receipt
                deadline = time.monotonic() + 10
                seqs: list[int] = []
                while sender.stats.unacked and time.monotonic() < deadline:
                    sender.pump(50)
                    while (parts := second.recv(timeout_ms=0)) is not None:
                        seqs.append(parse_header(parts[0]).seq)
                stats = sender.stats
    assert seqs == [1, 2]
    assert (stats.sent, stats.acked, stats.resent, stats.unacked) == (3, 3, 2, 0)
    assert stats.reconnects >= 1


def _wait_until_connected(sender: FrameSender, receiver: FrameReceiver) -> SenderStats:
    """Latest mode only queues on live connections: probe until one frame gets through, and return the
    counters to subtract (the probe and the attempts before the connection was up)."""
    probe = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    deadline = time.monotonic() + 5
    while not sender.send(header(0), probe):
        assert time.monotonic() < deadline, "the sender never connected"
        time.sleep(0.01)
    assert receiver.recv(timeout_ms=5000) is not None
    return sender.stats


def _drain(receiver: FrameReceiver) -> list[int]:
    seqs = []
    while (parts := receiver.recv(timeout_ms=500)) is not None:
        seqs.append(parse_header(parts[0]).seq)
    return seqs
