"""The frame bus: cameras (DEALER) send two-part frame messages, the inspector (ROUTER) acknowledges them.

Cameras connect and the inspector binds, so one inspector serves many cameras and a camera survives an
inspector restart. Pixel buffers travel without copies on either end: the sender hands ZeroMQ a view of
the numpy array and the receiver returns views of ZeroMQ's own message buffers.

`lossless` is the ZeroMQ guide's reliable pattern with credit-based flow control: the camera keeps every
frame in a replay buffer (bounded in bytes) until the inspector acknowledges it (`Ack`, sent once the
frame's result is committed), sends only while it has credit (the inspector's window of unacknowledged
frames per camera), and resends what is unacknowledged after a reconnect or when acks stop coming.
`latest` is fire-and-forget: newest frame wins, never blocks, nothing is replayed.

A socket belongs to one thread; give each camera thread its own FrameSender.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from types import TracebackType

import numpy as np
import zmq

from edge_inspect.bus.contracts import (
    DELIVERIES,
    Ack,
    ContractError,
    FrameHeader,
    Hello,
    encode_control,
    encode_frame,
    parse_control,
    parse_header,
)
from edge_inspect.bus.security import ClientKeys, ServerAuth
from edge_inspect.logs import log_event

logger = logging.getLogger(__name__)

# Latest: room for one frame only; when it is still queued, the new frame is the one that loses.
LATEST_SNDHWM = 1
# Latest: a small kernel send buffer too. Left to the OS, it grows to megabytes and hides a dozen stale
# full-size frames between the camera and the inspector; 64 KiB still fills a gigabit link.
LATEST_SNDBUF = 64 * 1024
# Lossless: the socket queue is not the back-pressure any more (credit is), so it only needs room for a
# credit window of frames plus heartbeats queued while the inspector is away.
LOSSLESS_SNDHWM = 10_000
DEFAULT_RCVHWM = 4
# Time to deliver (lossless: have acknowledged) what is queued on close; a stopped camera should not hang
# on a vanished inspector.
DEFAULT_LINGER_MS = 1000
# The largest frame message accepted: a 24 MP 16-bit mono frame with room to spare. A bigger camera
# raises it (bus.max_message_mb); anything larger is a fault or an attack, refused before it is buffered.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# How often a waiting lossless send looks at its stop check and the socket.
STOP_POLL_MS = 50
# Lossless replay buffer: frames captured and not yet acknowledged, at most this many bytes.
DEFAULT_REPLAY_BYTES = 256 * 1024 * 1024
# The inspector's window when none is given: frames per camera sent and not yet acknowledged.
DEFAULT_CREDIT = 32
# Frames a camera may send before it has heard from the inspector (which answers the camera's Hello with
# its real window within milliseconds): as many as an inspector grants by default, so a burst sent before
# the inspector reads its socket is queued, as it was on the old PUSH socket.
INITIAL_CREDIT = DEFAULT_CREDIT
# A lossless camera says Hello when it has not heard from the inspector for this long...
HEARTBEAT_S = 0.5
# ...and counts the inspector gone after this long without a word (a SIGKILLed inspector is noticed at
# once, from the disconnect; this catches a silent peer, e.g. a pulled cable).
PEER_TIMEOUT_S = 2.0
# A frame on the wire this long without an ack while the inspector is alive is resent (with every frame
# after it). Committing takes milliseconds; this is a safety net for a frame lost without a disconnect.
ACK_TIMEOUT_S = 10.0
# Routing identities the inspector remembers (one per camera id); bounded like everything a peer creates.
DEFAULT_MAX_ROUTES = 10_000


@dataclass
class SenderStats:
    """Counters of one FrameSender.

    `sent`: frames put on the wire (first time); `resent`: retransmissions; `acked`: frames the inspector
    confirmed recorded; `rejected`: frames it refused by the contract; `dropped`: frames lost at the
    camera (latest: the inspector was behind; lossless: a stop while the replay buffer was full, or a frame
    larger than the inspector accepts); `unacked`: frames in the replay buffer now.
    `backpressure_*`: waits of the capture loop (lossless: for credit, or for room in a full replay buffer,
    those also counted in `replay_full_events`); `reconnects`: times the link was reset and unacknowledged
    frames rewound for resending."""

    sent: int = 0
    dropped: int = 0
    backpressure_events: int = 0
    backpressure_seconds: float = 0.0
    acked: int = 0
    resent: int = 0
    rejected: int = 0
    too_large: int = 0
    replay_full_events: int = 0
    reconnects: int = 0
    unacked: int = 0
    unacked_bytes: int = 0


def _context_or_own(context: zmq.Context | None) -> tuple[zmq.Context, bool]:
    if context is not None:
        return context, False
    return zmq.Context(), True


def _nbytes(parts: Sequence[bytes | memoryview]) -> int:
    return sum(part.nbytes if isinstance(part, memoryview) else len(part) for part in parts)


# A frame's identity in the replay buffer: (camera_id, seq); one sender may carry several cameras.
FrameKey = tuple[str, int]


@dataclass
class Pending:
    """One frame in the replay buffer. `parts` reference the camera's buffers: they stay untouched until
    acknowledged."""

    key: FrameKey
    parts: list[bytes | memoryview]
    nbytes: int
    sent: bool = False
    sent_at: float = 0.0
    attempts: int = 0


class ReplayBuffer:
    """Lossless frames captured and not yet acknowledged, in capture order, bounded in bytes. Pure: no
    socket, no clock (callers pass `now`), so the credit and replay rules are plain unit tests.

    A frame is `sent` (on the wire, counted against credit) or not; `rewind` makes every sent frame unsent
    again, so after a reconnect frames go out again oldest first."""

    def __init__(self, max_bytes: int = DEFAULT_REPLAY_BYTES) -> None:
        if max_bytes < 1:
            raise ValueError(f"replay buffer of {max_bytes} bytes: give at least one byte")
        self.max_bytes = max_bytes
        self.nbytes = 0
        self.in_flight = 0
        self._frames: OrderedDict[FrameKey, Pending] = OrderedDict()
        self._unsent: deque[FrameKey] = deque()

    def __len__(self) -> int:
        return len(self._frames)

    def __contains__(self, key: FrameKey) -> bool:
        return key in self._frames

    def room_for(self, nbytes: int) -> bool:
        """Whether a frame of `nbytes` fits; an empty buffer takes any one frame, so a frame larger than
        the whole budget still goes (alone)."""
        return not self._frames or self.nbytes + nbytes <= self.max_bytes

    def add(self, key: FrameKey, parts: list[bytes | memoryview], nbytes: int) -> None:
        if key in self._frames:
            raise ValueError(f"frame {key} is already in the replay buffer; sequence numbers must be unique")
        self._frames[key] = Pending(key, parts, nbytes)
        self._unsent.append(key)
        self.nbytes += nbytes

    def acknowledge(self, keys: Iterable[FrameKey]) -> int:
        """Forget acknowledged frames; returns how many were here (acks of unknown seqs are ignored: a
        duplicate's ack, or one for a frame already acknowledged)."""
        removed = 0
        for key in keys:
            pending = self._frames.pop(key, None)
            if pending is None:
                continue
            removed += 1
            self.nbytes -= pending.nbytes
            if pending.sent:
                self.in_flight -= 1
        return removed

    def next_to_send(self, credit: int) -> Pending | None:
        """The oldest unsent frame, if credit allows one more frame in flight."""
        while self._unsent and (self._unsent[0] not in self._frames or self._frames[self._unsent[0]].sent):
            self._unsent.popleft()
        if not self._unsent or self.in_flight >= credit:
            return None
        return self._frames[self._unsent[0]]

    def mark_sent(self, pending: Pending, now: float) -> int:
        """`pending` (from next_to_send) is on the wire; returns how many times it has been sent."""
        if self._unsent and self._unsent[0] == pending.key:
            self._unsent.popleft()
        pending.sent, pending.sent_at = True, now
        pending.attempts += 1
        self.in_flight += 1
        return pending.attempts

    def drop(self, key: FrameKey) -> None:
        """Give a frame up (it can never be delivered, e.g. larger than the inspector accepts)."""
        self.acknowledge([key])

    def rewind(self) -> int:
        """Every frame in flight becomes unsent again, to go out again oldest first; returns how many."""
        rewound = sum(1 for pending in self._frames.values() if pending.sent)
        for pending in self._frames.values():
            pending.sent = False
        self.in_flight = 0
        self._unsent = deque(self._frames)
        return rewound

    def oldest_sent_at(self) -> float | None:
        """When the oldest frame in flight was sent; None when nothing is in flight."""
        if not self.in_flight:
            return None
        return min(pending.sent_at for pending in self._frames.values() if pending.sent)

    def oldest(self) -> FrameKey | None:
        return next(iter(self._frames), None)

    def is_unsent(self, key: FrameKey) -> bool:
        pending = self._frames.get(key)
        return pending is not None and not pending.sent


@dataclass
class Link:
    """What a lossless sender knows of the inspector: its credit and size limit, and when it last heard
    from it. `alive` decides whether the capture loop waits for credit (the inspector is there and busy:
    back-pressure) or buffers on (the inspector is away: replay later). Pure; times are passed in."""

    since: float
    credit: int = INITIAL_CREDIT
    max_message_bytes: int = 0  # 0: not known yet
    heard_at: float | None = None
    hello_at: float = -math.inf
    # The first link of a sender is given the benefit of the doubt for PEER_TIMEOUT_S (the inspector is
    # probably there and about to answer); a link made after losing the inspector is not.
    grace: bool = True

    def alive(self, now: float, timeout_s: float = PEER_TIMEOUT_S) -> bool:
        if self.heard_at is not None:
            return now - self.heard_at < timeout_s
        return self.grace and now - self.since < timeout_s

    def lost(self, now: float, timeout_s: float = PEER_TIMEOUT_S) -> bool:
        """Heard from before, silent for `timeout_s` since: the inspector is gone."""
        return self.heard_at is not None and now - self.heard_at >= timeout_s

    def hello_due(self, now: float, interval_s: float = HEARTBEAT_S) -> bool:
        quiet = self.heard_at is None or now - self.heard_at >= interval_s
        return quiet and now - self.hello_at >= interval_s

    def heard(self, now: float, ack: Ack) -> None:
        self.heard_at = now
        self.credit = ack.credit
        if ack.max_message_bytes:
            self.max_message_bytes = ack.max_message_bytes


class _Dealer:
    """The camera's DEALER socket and its disconnect monitor; remade on a reset so that frames still
    queued for a vanished inspector are discarded (they are resent, in order, from the replay buffer)."""

    def __init__(self, context: zmq.Context, endpoint: str, delivery: str, keys: ClientKeys | None) -> None:
        self.socket = context.socket(zmq.DEALER)
        self.monitor: zmq.Socket | None = None
        if delivery == "latest":
            self.socket.setsockopt(zmq.SNDHWM, LATEST_SNDHWM)
            self.socket.setsockopt(zmq.SNDBUF, LATEST_SNDBUF)
            # Queue only on live connections: frames queued for an absent inspector would be stale on arrival.
            self.socket.setsockopt(zmq.IMMEDIATE, 1)
        else:
            self.socket.setsockopt(zmq.SNDHWM, LOSSLESS_SNDHWM)
        try:
            if keys is not None:
                keys.apply(self.socket)
            self.socket.connect(endpoint)
            if delivery != "latest":
                self.monitor = self.socket.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        except zmq.ZMQError as exc:
            self.close(0)
            raise ValueError(
                f"cannot connect the frame bus to {endpoint!r} ({exc}); use tcp://HOST:PORT or ipc:///path"
            ) from exc

    def disconnected(self) -> bool:
        """Whether the monitor reported a disconnect since the last call (events are consumed)."""
        seen = False
        while self.monitor is not None and self.monitor.poll(0, zmq.POLLIN):
            self.monitor.recv_multipart()
            seen = True
        return seen

    def close(self, linger_ms: int) -> None:
        if self.monitor is not None:
            self.socket.disable_monitor()
            self.monitor.close(linger=0)
            self.monitor = None
        self.socket.close(linger=linger_ms)


class FrameSender:
    """Camera end: a DEALER socket connected to the inspector.

    `lossless` keeps every frame in a replay buffer of `replay_bytes` until acknowledged, sends while it has
    credit, and resends after a reconnect. The capture loop waits while the inspector is there but behind
    (credit used up) and while the replay buffer is full; while the inspector is away it buffers on.
    `latest` never blocks and drops the frame that does not fit (the inspector always sees recent frames).
    `should_stop` lets a waiting lossless send give up at shutdown; `on_ack` is called after acks freed
    frames (the camera's journal). Call `pump` when idle so acks are read, and `drain` before stopping.
    """

    def __init__(
        self,
        endpoint: str,
        delivery: str = "lossless",
        context: zmq.Context | None = None,
        *,
        should_stop: Callable[[], bool] | None = None,
        sndhwm: int | None = None,
        linger_ms: int = DEFAULT_LINGER_MS,
        keys: ClientKeys | None = None,
        replay_bytes: int = DEFAULT_REPLAY_BYTES,
        on_ack: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if delivery not in DELIVERIES:
            raise ValueError(f"delivery {delivery!r} is not one of {DELIVERIES}")
        self.endpoint = endpoint
        self.delivery = delivery
        self._should_stop = should_stop or (lambda: False)
        self._on_ack = on_ack or (lambda: None)
        self._clock = clock
        self._linger_ms = linger_ms
        self._keys = keys
        self._stats = SenderStats()
        self._buffer = ReplayBuffer(replay_bytes)
        self._camera_id: str | None = None
        self._context, self._owns_context = _context_or_own(context)
        try:
            self._dealer = _Dealer(self._context, endpoint, delivery, keys)
        except ValueError:
            if self._owns_context:
                self._context.term()
            raise
        if sndhwm is not None:
            self._dealer.socket.setsockopt(zmq.SNDHWM, sndhwm)
        self._link = Link(since=clock())

    @property
    def stats(self) -> SenderStats:
        """A snapshot; the sender keeps counting."""
        return replace(self._stats, unacked=len(self._buffer), unacked_bytes=self._buffer.nbytes)

    def unacked(self) -> tuple[int | None, int]:
        """The oldest unacknowledged seq (None when all are) and how many frames are unacknowledged."""
        oldest = self._buffer.oldest()
        return None if oldest is None else oldest[1], len(self._buffer)

    def send(self, header: FrameHeader, payload: np.ndarray | bytes) -> bool:
        """Hand one frame to the bus. True when taken (lossless: into the replay buffer, delivered or
        resent later), False when dropped.

        The payload's buffer is shared with ZeroMQ and, lossless, kept until the frame is acknowledged:
        do not write to the array after sending it.
        """
        parts = encode_frame(header, payload)
        if self.delivery == "latest":
            return self._send_latest(parts, header)
        self._camera_id = header.camera_id
        nbytes = _nbytes(parts)
        if not self._wait(lambda: self._buffer.room_for(nbytes), header, replay_full=True):
            self._stats.dropped += 1
            log_event(
                logger, logging.INFO, "frame_abandoned_at_stop", camera_id=header.camera_id, seq=header.seq
            )
            return False
        key = (header.camera_id, header.seq)
        self._buffer.add(key, parts, nbytes)
        self.pump()
        # While the inspector is there, its credit paces the camera; while it is away, frames wait here.
        self._wait(lambda: not self._buffer.is_unsent(key) or not self._link.alive(self._clock()), header)
        return True

    def _send_latest(self, parts: Sequence[bytes | memoryview], header: FrameHeader) -> bool:
        try:
            # Multipart sends are atomic: the high-water mark is checked on the first part only.
            self._dealer.socket.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self._stats.dropped += 1
            log_event(logger, logging.DEBUG, "frame_dropped", camera_id=header.camera_id, seq=header.seq)
            return False
        self._stats.sent += 1
        return True

    def _wait(self, ready: Callable[[], bool], header: FrameHeader, replay_full: bool = False) -> bool:
        """Pump until `ready()`; False when a stop came first. Counted as back-pressure when it waits."""
        if ready():
            return True
        self._stats.backpressure_events += 1
        self._stats.replay_full_events += replay_full
        started = time.perf_counter()
        try:
            while not ready():
                if self._should_stop():
                    return False
                self.pump(STOP_POLL_MS)
            return True
        finally:
            blocked = time.perf_counter() - started
            self._stats.backpressure_seconds += blocked
            log_event(
                logger,
                logging.DEBUG,
                "backpressure",
                camera_id=header.camera_id,
                seq=header.seq,
                replay_full=replay_full,
                blocked_s=round(blocked, 6),
            )

    def pump(self, timeout_ms: int = 0) -> None:
        """Lossless upkeep: notice a lost inspector, say Hello, read acks, send what credit allows; waits
        up to `timeout_ms` for the inspector to say something."""
        if self.delivery == "latest":
            return
        self._check_link(self._clock())
        self._send_ready()
        if self._dealer.socket.poll(timeout_ms, zmq.POLLIN):
            self._read_acks()
            self._send_ready()

    def drain(self, timeout_s: float, honour_stop: bool = True) -> int:
        """Lossless: wait up to `timeout_s` for every frame to be acknowledged; returns how many are not."""
        deadline = self._clock() + timeout_s
        while self.delivery == "lossless" and self._buffer and self._clock() < deadline:
            if honour_stop and self._should_stop():
                break
            self.pump(STOP_POLL_MS)
        return len(self._buffer)

    def _check_link(self, now: float) -> None:
        if self._dealer.disconnected():
            self._reset("disconnected", now)
        elif self._link.lost(now):
            self._reset("inspector_silent", now)
        else:
            sent_at = self._buffer.oldest_sent_at()
            if sent_at is not None and now - sent_at > ACK_TIMEOUT_S and self._link.alive(now):
                self._reset("ack_timeout", now)
        if self._camera_id is not None and self._link.hello_due(now):
            self._link.hello_at = now
            # Again: the queue is full of earlier Hellos (the inspector is away); one is enough.
            with contextlib.suppress(zmq.Again):
                self._dealer.socket.send(encode_control(Hello(self._camera_id)), flags=zmq.NOBLOCK)

    def _reset(self, reason: str, now: float) -> None:
        """A fresh socket (frames queued for the lost connection are discarded) and every unacknowledged
        frame rewound, so they go out again in capture order."""
        rewound = self._buffer.rewind()
        self._dealer.close(0)
        self._dealer = _Dealer(self._context, self.endpoint, self.delivery, self._keys)
        self._link = Link(since=now, grace=False)
        self._stats.reconnects += 1
        log_event(
            logger,
            logging.WARNING,
            "bus_link_reset",
            camera_id=self._camera_id,
            reason=reason,
            rewound=rewound,
            unacked=len(self._buffer),
        )

    def _read_acks(self) -> None:
        freed = 0
        while True:
            try:
                parts = self._dealer.socket.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                break
            try:
                message = parse_control(parts[0]) if len(parts) == 1 else None
            except ContractError as exc:
                log_event(logger, logging.WARNING, "bus_control_refused", reason=exc.reason, detail=str(exc))
                continue
            if not isinstance(message, Ack):
                continue
            self._link.heard(self._clock(), message)
            camera = message.camera_id
            acked = self._buffer.acknowledge((camera, seq) for seq in message.seqs)
            rejected = self._buffer.acknowledge((camera, seq) for seq in message.rejected)
            self._stats.acked += acked
            self._stats.rejected += rejected
            freed += acked + rejected
        if freed:
            self._on_ack()

    def _send_ready(self) -> None:
        while (pending := self._buffer.next_to_send(self._link.credit)) is not None:
            limit = self._link.max_message_bytes
            if limit and pending.nbytes > limit:
                # ZeroMQ would disconnect us for it, again after every resend: it can never be delivered.
                self._buffer.drop(pending.key)
                self._stats.dropped += 1
                self._stats.too_large += 1
                log_event(
                    logger,
                    logging.ERROR,
                    "frame_too_large",
                    seq=pending.key[1],
                    nbytes=pending.nbytes,
                    limit=limit,
                )
                self._on_ack()
                continue
            try:
                self._dealer.socket.send_multipart(pending.parts, flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            if self._buffer.mark_sent(pending, self._clock()) == 1:
                self._stats.sent += 1
            else:
                self._stats.resent += 1

    def close(self) -> None:
        """Lossless: wait up to the linger time for every frame to be acknowledged; latest: for queued
        frames to leave. Then close the socket."""
        if self.delivery == "lossless":
            self.drain(self._linger_ms / 1000, honour_stop=False)
            self._dealer.close(0)
        else:
            self._dealer.close(self._linger_ms)
        if self._owns_context:
            self._context.term()

    def __enter__(self) -> FrameSender:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


@dataclass(frozen=True)
class Incoming:
    """A frame message off the bus: the ROUTER's routing id of the sending connection and the frame's
    parts (zero-copy views; normally [header, payload], anything else is the caller's to refuse)."""

    route: bytes
    parts: list[memoryview]


class FrameReceiver:
    """Inspector end: a ROUTER socket bound to `endpoint`, fair-queuing frames from every camera.

    Answers every camera's Hello with its `credit` itself. With `auto_ack` (tools and tests), a lossless
    frame is acknowledged as soon as it is received; the inspector passes `auto_ack=False` and calls
    `ack` once the frame's result is committed. Bind to `tcp://127.0.0.1:*` for a free port; `endpoint`
    then names the real one. A message larger than `max_message_bytes` is refused by ZeroMQ itself (the
    peer is disconnected) before any of it is buffered. With `auth`, only allow-listed CURVE clients
    connect.
    """

    def __init__(
        self,
        endpoint: str,
        context: zmq.Context | None = None,
        rcvhwm: int = DEFAULT_RCVHWM,
        *,
        linger_ms: int = 0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        auth: ServerAuth | None = None,
        credit: int = DEFAULT_CREDIT,
        auto_ack: bool = True,
        max_routes: int = DEFAULT_MAX_ROUTES,
    ) -> None:
        self._context, self._owns_context = _context_or_own(context)
        self._socket = self._context.socket(zmq.ROUTER)
        self._socket.setsockopt(zmq.RCVHWM, rcvhwm)
        self._socket.setsockopt(zmq.LINGER, linger_ms)
        self._socket.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        self.credit = credit
        self.max_message_bytes = max_message_bytes
        self.auto_ack = auto_ack
        self._max_routes = max_routes
        # camera id → the routing id of its newest connection, where its acks go.
        self._routes: dict[str, bytes] = {}
        if auth is not None:
            auth.apply(self._socket)
        try:
            self._socket.bind(endpoint)
        except zmq.ZMQError as exc:
            self.close()
            raise OSError(
                f"cannot bind the frame bus to {endpoint!r} ({exc}); is another inspector already using it? "
                "Pick a free port or stop the other process"
            ) from exc
        self.endpoint: str = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)

    def recv(self, timeout_ms: int = 1000) -> list[memoryview] | None:
        """The parts of the next frame message as zero-copy views, or None after `timeout_ms` (-1: wait
        forever). The parts are not validated here; each view keeps its ZeroMQ message alive."""
        incoming = self.recv_routed(timeout_ms)
        return None if incoming is None else incoming.parts

    def recv_routed(self, timeout_ms: int = 1000) -> Incoming | None:
        """The next frame message with its route, or None after `timeout_ms`. Hellos are answered here;
        a one-part message that is not a control message is returned for the caller to refuse."""
        deadline = None if timeout_ms < 0 else time.monotonic() + timeout_ms / 1000
        while True:
            wait = -1 if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            if not self._socket.poll(wait, zmq.POLLIN):
                return None
            frames = self._socket.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            route, parts = frames[0].bytes, [frame.buffer for frame in frames[1:]]
            if len(parts) == 1 and self._answer_hello(route, parts[0]):
                continue
            if self.auto_ack and len(parts) == 2:
                self._ack_on_receipt(route, parts[0])
            return Incoming(route, parts)

    def _answer_hello(self, route: bytes, raw: memoryview) -> bool:
        try:
            message = parse_control(raw)
        except ContractError:
            return False
        if isinstance(message, Hello):
            self.remember(message.camera_id, route)
            self.ack(message.camera_id, route=route)
        return True  # an Ack sent to the inspector is meaningless: ignored

    def _ack_on_receipt(self, route: bytes, raw_header: memoryview) -> None:
        try:
            header = parse_header(raw_header)
        except ContractError:
            return  # the caller refuses it
        if header.delivery == "lossless":
            self.remember(header.camera_id, route)
            self.ack(header.camera_id, [header.seq])

    def remember(self, camera_id: str, route: bytes) -> None:
        """Acks for `camera_id` go to `route` from now on (its newest connection)."""
        if camera_id in self._routes or len(self._routes) < self._max_routes:
            self._routes[camera_id] = route

    def ack(
        self,
        camera_id: str,
        seqs: Sequence[int] = (),
        rejected: Sequence[int] = (),
        route: bytes | None = None,
    ) -> bool:
        """Tell a camera these frames are done with (and its credit); False when it is not reachable (it
        will resend after reconnecting, and the resends are recognised as duplicates)."""
        route = route if route is not None else self._routes.get(camera_id)
        if route is None:
            return False
        message = Ack(camera_id, list(seqs), list(rejected), self.credit, self.max_message_bytes)
        try:
            self._socket.send_multipart([route, encode_control(message)], flags=zmq.NOBLOCK)
        except zmq.ZMQError:  # Again (its queue is full: it is not reading) or a vanished peer
            return False
        return True

    def close(self) -> None:
        self._socket.close()
        if self._owns_context:
            self._context.term()

    def __enter__(self) -> FrameReceiver:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
