"""The lossless bus's rules as pure code: replay buffer, credit, link liveness, duplicate and gap detection,
the camera's sequence journal and the record store's sequence table. No sockets, no sleeps."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from edge_inspect.bus.contracts import Ack, ContractError, Hello, encode_control, parse_control
from edge_inspect.bus.transport import Link, ReplayBuffer
from edge_inspect.camera_adapters.base import SeqJournal
from edge_inspect.inspector.stages.acks import PendingFrames
from edge_inspect.inspector.stages.receive import SeqTracker


def key(seq: int) -> tuple[str, int]:
    return ("cam", seq)


def fill(buffer: ReplayBuffer, seqs: range, nbytes: int = 10) -> None:
    for seq in seqs:
        buffer.add(key(seq), [b"h", b"p"], nbytes)


def send_all(buffer: ReplayBuffer, credit: int, now: float = 0.0) -> list[int]:
    sent = []
    while (pending := buffer.next_to_send(credit)) is not None:
        buffer.mark_sent(pending, now)
        sent.append(pending.key[1])
    return sent


def test_credit_bounds_the_frames_in_flight_and_acks_free_it() -> None:
    buffer = ReplayBuffer(1000)
    fill(buffer, range(5))
    assert send_all(buffer, credit=2) == [0, 1]
    assert buffer.in_flight == 2 and buffer.next_to_send(2) is None
    assert buffer.acknowledge([key(0), key(0), key(99)]) == 1  # unknown and repeated acks are ignored
    assert send_all(buffer, credit=2) == [2]
    assert send_all(buffer, credit=4) == [3, 4]  # a larger window lets more go at once
    assert len(buffer) == 4 and buffer.nbytes == 40


def test_rewind_resends_every_unacknowledged_frame_oldest_first() -> None:
    buffer = ReplayBuffer(1000)
    fill(buffer, range(4))
    send_all(buffer, credit=3, now=1.0)
    buffer.acknowledge([key(1)])
    assert buffer.oldest_sent_at() == 1.0
    assert buffer.rewind() == 2
    assert buffer.oldest_sent_at() is None and buffer.in_flight == 0
    sent = []
    while (pending := buffer.next_to_send(10)) is not None:
        sent.append((pending.key[1], buffer.mark_sent(pending, 2.0)))
    assert sent == [(0, 2), (2, 2), (3, 1)]  # (seq, times sent)
    # An ack for a rewound frame that was committed after all removes it before it is resent.
    buffer.rewind()
    buffer.acknowledge([key(0)])
    assert send_all(buffer, credit=10) == [2, 3]


def test_the_buffer_is_bounded_in_bytes_but_always_takes_one_frame() -> None:
    buffer = ReplayBuffer(25)
    assert buffer.room_for(100)  # empty: one frame larger than the budget still goes, alone
    fill(buffer, range(2))
    assert not buffer.room_for(10) and buffer.room_for(5)
    with pytest.raises(ValueError, match="already in the replay buffer"):
        buffer.add(key(1), [b""], 1)
    buffer.drop(key(0))
    assert buffer.room_for(10) and buffer.oldest() == key(1)


def test_the_link_waits_for_credit_only_while_the_inspector_is_there() -> None:
    link = Link(since=0.0)
    assert link.alive(1.0) and not link.alive(2.5)  # first link: the benefit of the doubt, for a while
    assert link.hello_due(0.0) and not link.lost(5.0)
    link.hello_at = 0.0
    assert not link.hello_due(0.2) and link.hello_due(0.6)
    link.heard(3.0, Ack("cam", credit=8, max_message_bytes=1000))
    assert (link.credit, link.max_message_bytes) == (8, 1000)
    assert link.alive(4.0) and not link.hello_due(3.2)
    assert link.lost(5.0) and not link.alive(5.0)
    after_reset = Link(since=10.0, grace=False)
    assert not after_reset.alive(10.0)  # the inspector was lost: buffer, do not wait for it
    assert after_reset.hello_at == -math.inf


def test_control_messages_round_trip_and_refuse_other_versions() -> None:
    ack = Ack("cam", [1, 2], [3], credit=4, max_message_bytes=99)
    assert parse_control(encode_control(ack)) == ack
    assert parse_control(encode_control(Hello("cam"))) == Hello("cam")
    with pytest.raises(ContractError) as refused:
        parse_control(b'{"kind":"ack","camera_id":"cam","v":2}')
    assert refused.value.reason == "unknown_schema"
    with pytest.raises(ContractError) as refused:
        parse_control(b'{"kind":"frame"}')
    assert refused.value.reason == "bad_control"


def test_replays_are_duplicates_whether_in_the_pipeline_or_recorded() -> None:
    pending = PendingFrames()
    recorded = {"cam:100:1"}
    assert pending.classify("cam", 0, 50, recorded.__contains__) == PendingFrames.NEW
    assert pending.classify("cam", 0, 50, recorded.__contains__) == PendingFrames.IN_PIPELINE
    assert pending.classify("cam", 1, 100, recorded.__contains__) == PendingFrames.RECORDED
    assert pending.committed("cam:50:0") == ("cam", 0)
    assert pending.committed("cam:50:0") is None  # acknowledged once; latest frames are never pending
    assert len(pending) == 0


def test_seq_gaps_survive_a_restart_and_replays_are_not_gaps() -> None:
    tracker = SeqTracker({"cam": (10, 1000)})  # persisted: the newest committed frame
    assert tracker.gap("cam", 11, 1100) == 0
    assert tracker.gap("cam", 15, 1500) == 3  # 12..14 never arrived
    assert tracker.gap("cam", 12, 1200) == 0  # an older capture replayed: no gap, the mark stays
    assert tracker.gap("cam", 16, 1600) == 0
    assert tracker.gap("cam", 0, 9000) == 0  # a newer capture with a lower seq: the camera restarted
    assert tracker.gap("cam", 3, 9300) == 2


def test_the_journal_continues_the_count_and_reports_what_a_kill_lost(tmp_path: Path) -> None:
    journal = SeqJournal(tmp_path, "cam/1 ✓")
    assert journal.restore() == (0, 0)
    journal.write(next_seq=120, oldest_unacked=115, unacked=5)
    assert SeqJournal(tmp_path, "cam/1 ✓").restore() == (120, 5)
    journal.write(next_seq=130, oldest_unacked=None, unacked=0)  # a clean stop
    assert journal.restore() == (130, 0)
    other = SeqJournal(tmp_path, "other")
    other.path.write_text(journal.path.read_text())  # another camera's state under this name
    with pytest.raises(ValueError, match="not this camera's"):
        other.restore()
