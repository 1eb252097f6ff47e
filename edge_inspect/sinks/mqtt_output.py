"""The MQTT output: every recorded result, alarms and statuses to a broker (topics in docs/outputs.md).

A durable tail of the record store (sinks/result_tail.py): results go out in record order, QoS 1, and
the output's cursor advances only once the broker acknowledged (PUBACK) every message of a result. So
delivery is at least once, across broker outages and inspector restarts: a result published but not
acknowledged is published again, with the same `result_id`, by which consumers drop repeats.

Broker outage. paho keeps the messages it has in flight and sends them again after it reconnects (with
the DUP flag); no new results are taken from the tail while the broker is away, so memory stays bounded
by `max_in_flight`; the record store holds the rest. The session is persistent (clean_session False,
a fixed client id), so the broker also keeps what it owes this client's subscriptions.

Statuses (retained, so a consumer connecting later sees the current state): the inspector's
`online`/`offline`, with `offline` as its last will (the broker publishes it when the inspector dies
without saying goodbye), each camera's `online`/`offline` (online while it produced a result within
`camera_timeout_s`; read it only while the inspector is online, since a dead inspector cannot update
it), and the last result of each station.

Also from the record store, about once a second: each camera's health (device counters and last-frame
time, retained, when it changed) and every shift report the inspector made at shift end (retained, QoS 1,
marked published in the store once the broker acknowledged it: at least once).

TLS when `ca_file` or `client_cert` is set (paho's `tls_set`: the broker's certificate verified against
`ca_file` and its name against `host`; `client_cert` for mutual TLS). A connection that fails, a
certificate refused included, is counted (`edgeinspect_output_errors_total{reason="tls_failed"}` or
`"connect_failed"`), logged with what to check when its cause changes, and retried every 1 to 5 s.
"""

from __future__ import annotations

import json
import logging
import ssl
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from edge_inspect.inspector.config import MqttConfig
from edge_inspect.logs import log_event
from edge_inspect.sinks.record_store import CameraReading, RecordStore
from edge_inspect.sinks.result_tail import CameraWatch, ResultTail, TailItem, escape_id

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

    from edge_inspect.sinks.metrics import InspectorMetrics

log = logging.getLogger(__name__)

OUTPUT = "mqtt"
# How often camera health and shift reports are looked for in the record store.
SIDE_INTERVAL_S = 1.0
ALARM_VERDICTS = frozenset({"NG", "REVIEW"})
# The MQTT topic separator and wildcards; an id containing them must stay one topic level.
TOPIC_RESERVED = "/+#"


def topic_level(text: str) -> str:
    """One topic level from any id: `/`, `+`, `#`, `%` and control characters percent-encoded."""
    return escape_id(text, TOPIC_RESERVED)


@dataclass(frozen=True)
class Topics:
    """The topic of every message the output publishes (docs/outputs.md)."""

    prefix: str
    line: str

    def _base(self, *levels: str) -> str:
        return "/".join([self.prefix, topic_level(self.line), *(topic_level(level) for level in levels)])

    def result(self, station: str, camera: str) -> str:
        return f"{self._base(station, camera)}/result"

    def alarm(self, station: str, camera: str) -> str:
        return f"{self._base(station, camera)}/alarm"

    def camera_status(self, station: str, camera: str) -> str:
        return f"{self._base(station, camera)}/status"

    def last_result(self, station: str) -> str:
        return f"{self._base(station)}/last_result"

    def inspector_status(self) -> str:
        return f"{self._base()}/inspector/status"

    def camera_health(self, station: str, camera: str) -> str:
        return f"{self._base(station, camera)}/health"

    def shift_report(self) -> str:
        return f"{self._base()}/shift_report"


@dataclass(frozen=True)
class Message:
    topic: str
    payload: str
    retain: bool = False


def alarm_payload(result: dict[str, Any]) -> str:
    """What an andon board or a line controller needs of an NG or REVIEW part, without timings."""
    keys = ("result_id", "camera_id", "station", "part_id", "verdict", "score", "threshold", "t_capture_ns")
    alarm = {key: result.get(key) for key in keys}
    alarm["defect_classes"] = sorted({defect["cls"] for defect in result.get("defects", [])})
    return json.dumps(alarm, separators=(",", ":"))


def messages_for(item: TailItem, topics: Topics) -> list[Message]:
    """The messages of one result: the result, an alarm when NG/REVIEW, the station's retained last."""
    station, camera = item.result["station"], item.result["camera_id"]
    messages = [Message(topics.result(station, camera), item.payload)]
    if item.result["verdict"] in ALARM_VERDICTS:
        messages.append(Message(topics.alarm(station, camera), alarm_payload(item.result)))
    messages.append(Message(topics.last_result(station), item.payload, retain=True))
    return messages


def health_payload(reading: CameraReading) -> str:
    fields = {"camera_id": reading.camera_id, "station": reading.station}
    fields.update(
        msgspec.structs.asdict(reading.health),
        last_frame_ns=reading.last_frame_ns,
        frames_received=reading.frames_received,
        source_frame_id=reading.source_frame_id,
    )
    return json.dumps(fields, separators=(",", ":"))


def connect_failure(exc: BaseException | None, config: MqttConfig) -> tuple[str, str]:
    """The error reason (a metric label) and what to check, for a connection attempt that failed."""
    where = f"{config.host}:{config.port}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "tls_failed", (
            f"mqtt.ca_file does not verify the certificate of the broker at {where} ({exc.verify_message}): "
            "mqtt.ca_file must be the CA that issued the broker's certificate, which must name mqtt.host"
        )
    if isinstance(exc, ssl.SSLError):
        return "tls_failed", (
            f"the TLS handshake with {where} failed ({exc.reason}): check that mqtt.port is the broker's TLS "
            "listener and, if the broker requires client certificates, mqtt.client_cert and mqtt.client_key"
        )
    if isinstance(exc, ConnectionRefusedError):
        return (
            "connect_failed",
            f"nothing accepts connections at {where}: check the broker and mqtt.host/port",
        )
    return "connect_failed", f"connecting to {where} failed ({exc!r}): check the broker and the network"


def status_payload(state: str, **extra: Any) -> str:
    return json.dumps({"state": state, "t_ns": time.time_ns(), **extra}, separators=(",", ":"))


class Statuses:
    """The retained statuses: the inspector's, and each camera's from the result stream. Thread-safe:
    paho's thread republishes them on every connect, the output's thread updates them."""

    def __init__(self, client: mqtt.Client, topics: Topics, camera_timeout_s: float) -> None:
        self.client, self.topics = client, topics
        self.cameras = CameraWatch(camera_timeout_s)
        self._lock = threading.Lock()
        # Under the lock: a camera seen while disconnected is published by the next `connected`.
        self._connected = False

    def connected(self) -> None:
        self.client.publish(self.topics.inspector_status(), status_payload("online"), qos=1, retain=True)
        with self._lock:
            self._connected = True
            # The broker may have lost its retained messages (restarted without persistence).
            for station, camera in self.cameras.online:
                self._publish_camera(station, camera)

    def disconnected(self) -> None:
        with self._lock:
            self._connected = False

    def seen(self, station: str, camera: str, t_capture_ns: int, now_ns: int) -> None:
        with self._lock:
            if self.cameras.seen(station, camera, t_capture_ns, now_ns) and self._connected:
                self._publish_camera(station, camera)

    def expire(self, now_ns: int) -> None:
        with self._lock:
            for station, camera in self.cameras.expire(now_ns):
                if self._connected:
                    self._publish_camera(station, camera)

    def goodbye(self) -> list[mqtt.MQTTMessageInfo]:
        """Every camera and the inspector offline (a graceful stop); the messages to wait for."""
        with self._lock:
            for key in self.cameras.online:
                self.cameras.online[key] = False
            infos = [self._publish_camera(*key, reason="stopped") for key in self.cameras.online]
        payload = status_payload("offline", reason="stopped")
        infos.append(self.client.publish(self.topics.inspector_status(), payload, qos=1, retain=True))
        return infos

    def _publish_camera(self, station: str, camera: str, **extra: str) -> mqtt.MQTTMessageInfo:
        state = "online" if self.cameras.online.get((station, camera), False) else "offline"
        payload = status_payload(state, camera_id=camera, station=station, **extra)
        return self.client.publish(self.topics.camera_status(station, camera), payload, qos=1, retain=True)


class MqttOutput:
    """One thread following the record store and publishing to the broker; `start()`, then `stop()`."""

    def __init__(
        self,
        config: MqttConfig,
        db_path: Path,
        state_path: Path,
        metrics: InspectorMetrics | None = None,
    ) -> None:
        if config.host is None:
            raise ValueError("mqtt.host is not set: the MQTT output is off")
        self.config = config
        self.db_path, self.state_path = Path(db_path), Path(state_path)
        self.metrics = metrics
        self.topics = Topics(config.topic_prefix, config.line)
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._drain_deadline = 0.0
        self._in_flight: deque[tuple[TailItem, list[mqtt.MQTTMessageInfo]]] = deque()
        self._reports_in_flight: dict[str, mqtt.MQTTMessageInfo] = {}
        self._health_sent: dict[str, CameraReading] = {}
        self._next_side_s = 0.0
        self._last_failure = ""  # the last connection failure logged, so that a retry loop logs it once
        self.client = self._make_client()
        self.statuses = Statuses(self.client, self.topics, config.camera_timeout_s)
        self._thread = threading.Thread(target=self._run, name="edge-inspect-mqtt", daemon=True)
        self.failure: BaseException | None = None

    def _make_client(self) -> mqtt.Client:
        import paho.mqtt.client as mqtt

        config = self.config
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=config.client_id or f"edgeinspect-{config.line}",
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        client.will_set(
            self.topics.inspector_status(), status_payload("offline", reason="lost"), qos=1, retain=True
        )
        if config.username is not None:
            password = config.password_file.read_text().strip() if config.password_file else None
            client.username_pw_set(config.username, password)
        if config.tls:
            client.tls_set(
                ca_certs=str(config.ca_file) if config.ca_file else None,
                certfile=str(config.client_cert) if config.client_cert else None,
                keyfile=str(config.client_key) if config.client_key else None,
            )
        client.reconnect_delay_set(min_delay=1, max_delay=5)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        return client

    # -- paho callbacks (paho's network thread) ----------------------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self._count_error("connect_refused")
            log_event(log, logging.WARNING, "mqtt_connect_refused", reason=str(reason))
            return
        self._last_failure = ""
        self.statuses.connected()
        self._connected.set()
        self._set_connected(True)
        log_event(log, logging.INFO, "mqtt_connected", host=self.config.host, port=self.config.port)

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        # paho calls this from inside its `except OSError` around the attempt, so the exception is the one
        # being handled; paho does not pass it.
        reason, hint = connect_failure(sys.exc_info()[1], self.config)
        self._count_error(reason)
        level = logging.WARNING if hint != self._last_failure else logging.DEBUG
        self._last_failure = hint
        log_event(log, level, "mqtt_connect_failed", reason=reason, error=hint)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self._connected.clear()
        self.statuses.disconnected()
        self._set_connected(False)
        if not self._stop.is_set():
            self._count_error("disconnected")
            log_event(log, logging.WARNING, "mqtt_disconnected", reason=str(reason))

    # -- lifetime ----------------------------------------------------------------------------------
    def start(self) -> None:
        self.client.connect_async(self.config.host or "", self.config.port, self.config.keepalive_s)
        self.client.loop_start()
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Publish what is left within `timeout_s` (the rest waits in the record store for the next
        start), say offline, disconnect."""
        self._drain_deadline = time.monotonic() + timeout_s
        self._stop.set()
        self._thread.join(timeout_s + 1.0)
        self.client.loop_stop()

    def connected(self) -> bool:
        return self._connected.is_set()

    # -- the tail loop (this output's thread) --------------------------------------------------------
    def _run(self) -> None:
        tail = ResultTail(self.db_path, self.state_path, OUTPUT)
        store = RecordStore(self.db_path)
        try:
            now_ns = time.time_ns()
            for station, camera, last_ns in tail.cameras():  # known from the start, published on connect
                self.statuses.seen(station, camera, last_ns, now_ns)
            while not self._stop.wait(self.config.poll_ms / 1000.0):
                self._step(tail)
                self._step_side(store)
            while self._in_flight or tail.lag():
                if time.monotonic() > self._drain_deadline or not self._connected.is_set():
                    break
                self._step(tail)
                time.sleep(0.01)
            self._goodbye()
        except BaseException as exc:
            self.failure = exc
            log_event(log, logging.ERROR, "mqtt_output_crashed", error=repr(exc))
            raise
        finally:
            tail.close()
            store.close()

    def _step(self, tail: ResultTail) -> None:
        now_ns = time.time_ns()
        room = self.config.max_in_flight - len(self._in_flight)
        if self._connected.is_set() and room > 0:
            for item in tail.next_batch(room):
                infos = [
                    self.client.publish(m.topic, m.payload, qos=1, retain=m.retain)
                    for m in messages_for(item, self.topics)
                ]
                self._in_flight.append((item, infos))
                result = item.result
                self.statuses.seen(result["station"], result["camera_id"], result["t_capture_ns"], now_ns)
        self._commit_acknowledged(tail)
        self.statuses.expire(now_ns)
        if self.metrics is not None:
            self.metrics.set_output_lag(OUTPUT, tail.lag())

    def _step_side(self, store: RecordStore) -> None:
        """Camera health and shift reports, about once a second."""
        if time.monotonic() < self._next_side_s:
            return
        self._next_side_s = time.monotonic() + SIDE_INTERVAL_S
        for key, info in list(self._reports_in_flight.items()):
            if info.is_published():
                store.mark_report_pushed(key, "mqtt", time.time_ns())
                del self._reports_in_flight[key]
        if not self._connected.is_set():
            return
        for key, report in store.shift_reports(unpushed_to="mqtt"):
            if key not in self._reports_in_flight:
                payload = json.dumps(report, separators=(",", ":"))
                self._reports_in_flight[key] = self.client.publish(
                    self.topics.shift_report(), payload, qos=1, retain=True
                )
        for reading in store.camera_health():
            if self._health_sent.get(reading.camera_id) != reading:
                topic = self.topics.camera_health(reading.station, reading.camera_id)
                self.client.publish(topic, health_payload(reading), qos=1, retain=True)
                self._health_sent[reading.camera_id] = reading

    def _commit_acknowledged(self, tail: ResultTail) -> None:
        # In order: the cursor never passes a result the broker has not acknowledged.
        last, count = None, 0
        while self._in_flight and all(info.is_published() for info in self._in_flight[0][1]):
            last, count = self._in_flight.popleft()[0], count + 1
        if last is not None:
            tail.commit(last)
            if self.metrics is not None:
                self.metrics.output_delivered(OUTPUT, count)

    def _goodbye(self) -> None:
        """A graceful stop: every camera and the inspector offline (retained), then disconnect."""
        if not self._connected.is_set():
            return
        for info in self.statuses.goodbye():
            try:
                info.wait_for_publish(max(0.1, self._drain_deadline - time.monotonic()))
            except (RuntimeError, ValueError):
                break  # the connection went while saying goodbye: the last will says offline instead
        self.client.disconnect()

    def _set_connected(self, connected: bool) -> None:
        if self.metrics is not None:
            self.metrics.set_output_connected(OUTPUT, connected)

    def _count_error(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.output_error(OUTPUT, reason)
