"""Part ids from a trigger source: a barcode reader or a PLC publishing on MQTT, a PLC variable read over
OPC UA, or the camera's own frame counter. The gateway asks its feed once per captured frame (`take`), so
every result, record, alarm and output carries the id of the part that was in front of the lens.

Matching, `PartIdQueue` (pure, thread-safe):
- `next`: each id goes to exactly one frame, in arrival order: the id read when a part arrives at the
  station (a part counter, a barcode) is used by the next frame captured. Ids older than `max_age_s` are
  dropped as stale (counted), so a missed trigger never shifts every later id by one part.
- `latest`: every frame takes the newest id until another arrives (a lot or batch number, or a camera that
  takes several images of one part).
A frame with no id to take gets none (counted as `frames_without_id`), never a made-up one.

The feeds run their client in a thread of their own and reconnect with back-off; an OPC UA subscription
first reports the variable's current value, which is the previous part's id and is therefore ignored.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from edge_inspect.bus.contracts import MAX_ID_CHARS
from edge_inspect.camera_adapters.base import PartIdFeed
from edge_inspect.camera_adapters.config import (
    FrameIdPartIds,
    MqttPartIds,
    OpcUaPartIds,
    PartIdsConfig,
)
from edge_inspect.logs import log_event

log = logging.getLogger(__name__)

_PRINTABLE = re.compile(r"^[^\x00-\x1f\x7f]+$")
RECONNECT_INITIAL_S = 0.5
RECONNECT_MAX_S = 10.0


def part_id_of(payload: bytes | str | int | float) -> str:
    """The id in a trigger message: plain text (or a PLC's number), or JSON with a `part_id` field.
    ValueError, saying what was wrong, for anything that cannot be a part id."""
    if isinstance(payload, bytes):
        try:
            payload = payload.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("trigger message is not UTF-8 text; send the id as text") from None
    if isinstance(payload, bool) or not isinstance(payload, (str, int, float)):
        raise ValueError(f"trigger value of type {type(payload).__name__} is not an id")
    text = str(payload).strip()
    if text.startswith("{"):
        try:
            text = str(json.loads(text)["part_id"]).strip()
        except (ValueError, KeyError, TypeError):
            raise ValueError('trigger JSON must be an object with a "part_id" field') from None
    if not text or len(text) > MAX_ID_CHARS or not _PRINTABLE.match(text):
        raise ValueError(f"part id {text[:40]!r} must be 1..{MAX_ID_CHARS} printable characters")
    return text


@dataclass
class PartIdCounts:
    received: int = 0
    invalid: int = 0
    stale: int = 0
    frames_without_id: int = 0


class PartIdQueue:
    """Ids as they arrive, matched to frames as they are captured (see the module docstring)."""

    def __init__(self, match: str = "next", max_age_s: float = 10.0, capacity: int = 1024) -> None:
        if match not in ("next", "latest"):
            raise ValueError(f"match {match!r} must be 'next' or 'latest'")
        self.match = match
        self.max_age_ns = int(max_age_s * 1e9)
        self._ids: deque[tuple[str, int]] = deque(maxlen=capacity)
        self._lock = threading.Lock()
        self.counts = PartIdCounts()

    def offer(self, payload: bytes | str | int | float, t_ns: int) -> None:
        try:
            part_id = part_id_of(payload)
        except ValueError as exc:
            with self._lock:
                self.counts.invalid += 1
            log_event(log, logging.WARNING, "part_id_refused", error=str(exc))
            return
        with self._lock:
            self.counts.received += 1
            if self.match == "latest":
                self._ids.clear()
            self._ids.append((part_id, t_ns))

    def take(self, t_capture_ns: int) -> str | None:
        with self._lock:
            while self._ids and t_capture_ns - self._ids[0][1] > self.max_age_ns:
                self._ids.popleft()
                self.counts.stale += 1
            if not self._ids:
                self.counts.frames_without_id += 1
                return None
            if self.match == "latest":
                return self._ids[-1][0]
            return self._ids.popleft()[0]


class MqttPartIdFeed:
    """Subscribes to `topic` (QoS 1) on an MQTT broker; paho reconnects by itself and resubscribes here."""

    def __init__(self, config: MqttPartIds) -> None:
        import paho.mqtt.client as mqtt

        self.config = config
        self.queue = PartIdQueue(config.match, config.max_age_s)
        self.connected = threading.Event()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        if config.username is not None:
            password = config.password_file.read_text().strip() if config.password_file else None
            self._client.username_pw_set(config.username, password)
        if config.ca_file is not None:
            self._client.tls_set(ca_certs=str(config.ca_file))
        self._client.reconnect_delay_set(min_delay=1, max_delay=int(RECONNECT_MAX_S))
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = lambda _client, _userdata, message: self.queue.offer(
            message.payload, time.time_ns()
        )
        self._client.connect_async(config.host, config.port, keepalive=15)
        self._client.loop_start()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            log_event(log, logging.WARNING, "part_id_feed_refused", source="mqtt", reason=str(reason))
            return
        client.subscribe(self.config.topic, qos=1)
        self.connected.set()
        log_event(log, logging.INFO, "part_id_feed_connected", source="mqtt", topic=self.config.topic)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.connected.clear()
        log_event(log, logging.WARNING, "part_id_feed_lost", source="mqtt", reason=str(reason))

    def take(self, t_capture_ns: int, frame_id: int | None = None) -> str | None:
        return self.queue.take(t_capture_ns)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


class FrameIdPartIdFeed:
    """The camera's own frame id as the part id (`prefix` + id): a line-scan or hardware-triggered camera
    whose frame counter counts parts."""

    def __init__(self, config: FrameIdPartIds) -> None:
        self.prefix = config.prefix

    def take(self, t_capture_ns: int, frame_id: int | None = None) -> str | None:
        return None if frame_id is None else f"{self.prefix}{frame_id}"

    def close(self) -> None:
        """Nothing to release."""


def open_feed(config: PartIdsConfig) -> PartIdFeed:
    """The feed a camera entry's `part_ids` describes."""
    if isinstance(config, MqttPartIds):
        return MqttPartIdFeed(config)
    if isinstance(config, OpcUaPartIds):
        return OpcUaPartIdFeed(config)
    return FrameIdPartIdFeed(config)


class OpcUaPartIdFeed:
    """Subscribes to one PLC variable over OPC UA (asyncua) in a thread of its own; reconnects with
    back-off when the PLC goes away."""

    def __init__(self, config: OpcUaPartIds) -> None:
        self.config = config
        self.queue = PartIdQueue(config.match, config.max_age_s)
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edge-inspect-part-ids", daemon=True)
        self._thread.start()

    def take(self, t_capture_ns: int, frame_id: int | None = None) -> str | None:
        return self.queue.take(t_capture_ns)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5.0)

    def _run(self) -> None:
        asyncio.run(self._follow())

    async def _follow(self) -> None:
        delay = RECONNECT_INITIAL_S
        while not self._stop.is_set():
            try:
                await self._subscribe_until_lost()
                delay = RECONNECT_INITIAL_S
            except Exception as exc:  # any failure of the PLC connection: report, back off, reconnect
                log_event(
                    log, logging.WARNING, "part_id_feed_lost", source="opcua", error=repr(exc), retry_s=delay
                )
            self.connected.clear()
            await asyncio.sleep(delay)
            delay = min(RECONNECT_MAX_S, delay * 2)

    async def _subscribe_until_lost(self) -> None:
        from asyncua import Client

        async with Client(self.config.endpoint, timeout=4) as client:
            handler = _DataChanges(self.queue)
            subscription = await client.create_subscription(50, handler)
            await subscription.subscribe_data_change(client.get_node(self.config.node))
            self.connected.set()
            log_event(log, logging.INFO, "part_id_feed_connected", source="opcua", node=self.config.node)
            while not self._stop.is_set():
                await asyncio.sleep(0.2)
                await client.check_connection()


class _DataChanges:
    """asyncua's subscription handler: each change of the variable is the id of the part arriving."""

    def __init__(self, queue: PartIdQueue) -> None:
        self._queue = queue
        self._initial = True

    def datachange_notification(self, node: Any, value: Any, data: Any) -> None:
        if self._initial:  # the value when we subscribed: the previous part's
            self._initial = False
            return
        self._queue.offer(value, time.time_ns())
