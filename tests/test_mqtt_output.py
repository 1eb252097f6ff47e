"""The MQTT output against a real mosquitto on loopback: every result arrives (QoS 1, at least once, by
result id), alarms, retained statuses and last results, the last will, restarts, a 30 s outage, and TLS:
mutual TLS, and a broker certificate the output's CA does not verify (counted, retried, then fixed)."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from edge_inspect.inspector.config import MqttConfig
from edge_inspect.sinks.metrics import InspectorMetrics
from edge_inspect.sinks.mqtt_output import MqttOutput, Topics, topic_level
from edge_inspect.sinks.result_tail import ResultTail
from tests.helpers import ROOT, wait_until
from tests.output_peers import Mosquitto, make_result, record
from tests.tls_peers import TlsFiles, make_tls_files

LINE = "L1"


class Subscriber:
    """A paho subscriber to everything under the prefix; a persistent session, so that the broker keeps
    QoS 1 messages for it across its own restart (as a real consumer would be set up)."""

    def __init__(
        self, port: int, client_id: str = "test-sub", clean: bool = False, tls: TlsFiles | None = None
    ) -> None:
        self.messages: list[tuple[str, dict[str, Any], bool]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean)
        if tls is not None:
            self.client.tls_set(str(tls.ca_cert), str(tls.client_cert), str(tls.client_key))
        self.client.on_connect = lambda c, *_: c.subscribe("edgeinspect/#", qos=1)
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 2)
        self.client.connect("127.0.0.1", port, keepalive=5)
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((msg.topic, json.loads(msg.payload), bool(msg.retain)))

    def on(self, topic: str) -> list[dict[str, Any]]:
        with self.lock:
            return [payload for t, payload, _ in self.messages if t == topic]

    def result_ids(self) -> list[str]:
        with self.lock:
            return [p["result_id"] for t, p, _ in self.messages if t.endswith("/result")]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def broker(tmp_path: Path) -> Any:
    mosquitto = Mosquitto(tmp_path / "broker")
    mosquitto.start()
    yield mosquitto
    mosquitto.stop()


def make_output(
    tmp_path: Path, port: int, metrics: InspectorMetrics | None = None, **extra: Any
) -> MqttOutput:
    config = MqttConfig(host="127.0.0.1", port=port, line=LINE, keepalive_s=5, **extra)
    return MqttOutput(config, tmp_path / "records.sqlite", tmp_path / "outputs.sqlite", metrics)


def test_ids_stay_one_topic_level() -> None:
    assert topic_level("cam/1+#") == "cam%2F1%2B%23"
    assert topic_level("50%") == "50%25"
    assert topic_level("") == "%00"
    topics = Topics("edgeinspect", "L/1")
    assert topics.result("st#1", "a/b/c") == "edgeinspect/L%2F1/st%231/a%2Fb%2Fc/result"
    assert topics.last_result("+") == "edgeinspect/L%2F1/%2B/last_result"
    assert topics.inspector_status() == "edgeinspect/L%2F1/inspector/status"
    # Distinct ids stay distinct after encoding.
    assert topic_level("a%2Fb") != topic_level("a/b")


def test_results_alarms_and_retained_state(tmp_path: Path, broker: Mosquitto) -> None:
    sub = Subscriber(broker.port)
    metrics = InspectorMetrics()
    output = make_output(tmp_path, broker.port, metrics)
    camera = "cam/+#1"  # wildcards and separators in the id must not break the topics
    results = [make_result(i, camera=camera, verdict="NG" if i == 2 else "OK") for i in range(5)]
    record(tmp_path / "records.sqlite", *results[:2])
    output.start()
    try:
        record(tmp_path / "records.sqlite", *results[2:])
        topics = Topics("edgeinspect", LINE)
        wait_until(lambda: len(set(sub.result_ids())) == 5, 15, "five results")
        # In record order, each exactly as recorded (the result contract).
        assert sub.result_ids() == [r.result_id for r in results]
        assert sub.on(topics.result("st-1", camera))[2] == json.loads(results[2].to_json())
        alarms = sub.on(topics.alarm("st-1", camera))
        assert [(a["result_id"], a["defect_classes"]) for a in alarms] == [(results[2].result_id, ["crack"])]
        wait_until(lambda: metrics.output_lag.labels(output="mqtt")._value.get() == 0, 5, "lag 0")
        assert metrics.output_published.labels(output="mqtt")._value.get() == 5
        assert metrics.output_connected.labels(output="mqtt")._value.get() == 1

        # A consumer connecting late gets the current state from the retained messages.
        late = Subscriber(broker.port, client_id="late", clean=True)
        wait_until(lambda: late.on(topics.last_result("st-1")), 5, "retained last result")
        assert late.on(topics.last_result("st-1"))[-1]["result_id"] == results[-1].result_id
        wait_until(lambda: late.on(topics.inspector_status()), 5, "retained inspector status")
        assert late.on(topics.inspector_status())[-1]["state"] == "online"
        assert late.on(topics.camera_status("st-1", camera))[-1]["state"] == "online"
        late.close()
    finally:
        output.stop()
    # A graceful stop says offline, for the inspector and every camera.
    wait_until(lambda: sub.on(topics.inspector_status())[-1:][0]["state"] == "offline", 5, "offline")
    assert sub.on(topics.camera_status("st-1", camera))[-1]["state"] == "offline"
    sub.close()


def test_restart_resumes_after_the_cursor(tmp_path: Path, broker: Mosquitto) -> None:
    db = tmp_path / "records.sqlite"
    sub = Subscriber(broker.port)
    output = make_output(tmp_path, broker.port)
    results = [make_result(i) for i in range(6)]
    output.start()
    record(db, *results[:3])
    wait_until(lambda: len(sub.result_ids()) >= 3, 10, "first results")
    output.stop()
    # Recorded while the output is down: published after it comes back, the earlier ones not again.
    record(db, *results[3:])
    output = make_output(tmp_path, broker.port)
    output.start()
    try:
        wait_until(lambda: len(set(sub.result_ids())) == 6, 10, "results recorded while stopped")
        time.sleep(0.5)
        assert sub.result_ids() == [r.result_id for r in results]
    finally:
        output.stop()
        sub.close()


def test_cursor_restarts_when_retention_emptied_the_table(tmp_path: Path) -> None:
    db, state = tmp_path / "records.sqlite", tmp_path / "outputs.sqlite"
    record(db, *(make_result(i) for i in range(3)))
    tail = ResultTail(db, state, "mqtt")
    items = tail.next_batch(10)
    tail.commit(items[-1])
    assert tail.next_batch(10) == []
    tail.close()
    import sqlite3

    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM results")
    record(db, make_result(7))  # gets rowid 1 again
    tail = ResultTail(db, state, "mqtt")
    assert [item.result["seq"] for item in tail.next_batch(10)] == [7]
    tail.close()


LWT_SCRIPT = """
import sys, time
from pathlib import Path
from edge_inspect.inspector.config import MqttConfig
from edge_inspect.sinks.mqtt_output import MqttOutput
workdir = Path(sys.argv[2])
output = MqttOutput(MqttConfig(host="127.0.0.1", port=int(sys.argv[1]), line="L1", keepalive_s=5),
                    workdir / "records.sqlite", workdir / "outputs.sqlite")
output.start()
while not output.connected():
    time.sleep(0.05)
print("connected", flush=True)
time.sleep(600)
"""


def test_last_will_when_the_inspector_is_killed(tmp_path: Path, broker: Mosquitto) -> None:
    sub = Subscriber(broker.port)
    proc = subprocess.Popen(
        [sys.executable, "-c", LWT_SCRIPT, str(broker.port), str(tmp_path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "connected"
        topic = Topics("edgeinspect", LINE).inspector_status()
        wait_until(lambda: sub.on(topic)[-1:] and sub.on(topic)[-1]["state"] == "online", 5, "online")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
        # The broker notices the dropped connection and publishes the will (retained).
        wait_until(lambda: sub.on(topic)[-1]["state"] == "offline", 15, "the last will")
        assert sub.on(topic)[-1]["reason"] == "lost"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        sub.close()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_broker_stopped_for_30_s_loses_no_result(tmp_path: Path, broker: Mosquitto) -> None:
    db = tmp_path / "records.sqlite"
    sub = Subscriber(broker.port)
    metrics = InspectorMetrics()
    output = make_output(tmp_path, broker.port, metrics)
    output.start()
    recorded: list[str] = []
    stop = threading.Event()

    def line() -> None:  # the inspector keeps recording results all along, 10 a second
        seq = 0
        while not stop.wait(0.1):
            result = make_result(seq, verdict="NG" if seq % 7 == 0 else "OK")
            record(db, result)
            recorded.append(result.result_id)
            seq += 1

    recorder = threading.Thread(target=line, daemon=True)
    recorder.start()
    try:
        wait_until(lambda: len(sub.result_ids()) >= 10, 10, "results before the outage")
        broker.stop()
        wait_until(lambda: not output.connected(), 10, "the output to notice the outage")
        assert metrics.output_connected.labels(output="mqtt")._value.get() == 0
        time.sleep(30)
        assert metrics.output_lag.labels(output="mqtt")._value.get() >= 250  # waiting in the record store
        broker.start()
        time.sleep(3)
        stop.set()
        recorder.join()
        wait_until(lambda: set(sub.result_ids()) >= set(recorded), 60, "every result after the outage")
    finally:
        stop.set()
        output.stop()
        sub.close()
    received = Counter(sub.result_ids())
    assert set(received) == set(recorded) and len(recorded) > 300
    # Repeats are possible (at least once) and identifiable by result id; nothing else arrives.
    assert metrics.output_lag.labels(output="mqtt")._value.get() == 0


def test_outputs_started_from_the_inspector_config(tmp_path: Path, broker: Mosquitto) -> None:
    from edge_inspect.inspector.outputs import start_outputs, stop_outputs
    from tests.helpers import loopback_config
    from tests.output_peers import free_port

    config = loopback_config(
        tmp_path,
        {
            "model.package": tmp_path,
            "mqtt.host": "127.0.0.1",
            "mqtt.port": broker.port,
            "mqtt.line": LINE,
            "opcua.endpoint": f"opc.tcp://127.0.0.1:{free_port()}/edgeinspect/",
        },
    )
    sub = Subscriber(broker.port)
    outputs = start_outputs(config, InspectorMetrics())
    try:
        assert [type(output).__name__ for output in outputs] == ["MqttOutput", "OpcUaOutput"]
        result = make_result(1)
        record(config.db_path, result)
        wait_until(lambda: sub.result_ids() == [result.result_id], 10, "the result over MQTT")
    finally:
        stop_outputs(outputs)
        sub.close()
    assert (tmp_path / "outputs.sqlite").is_file()


def test_shift_reports_and_camera_health_reach_the_broker(tmp_path: Path, broker: Mosquitto) -> None:
    """A shift report the inspector made while the broker was down is published once it is back, and marked
    published in the store only after the broker acknowledged it; camera health is retained per camera."""
    from edge_inspect.bus.contracts import CameraHealth
    from edge_inspect.sinks.record_store import CameraReading, RecordStore

    db = tmp_path / "records.sqlite"
    record(db, make_result(0))
    report = {"report": "shift", "line": LINE, "shift": "early", "date": "2026-12-01", "totals": {}}
    reading = CameraReading("cam-1", "st-1", time.time_ns(), 5, CameraHealth(5, 1, 2, 0), source_frame_id=41)
    with RecordStore(db) as store:
        store.add_shift_report("shift-report:L1:2026-12-01:early", 0, report, time.time_ns())
        store.save_camera_health([reading])
    broker.stop()
    output = make_output(tmp_path, broker.port)
    output.start()
    try:
        time.sleep(1.5)  # the output polls the store while the broker is away: nothing may be marked
        with RecordStore(db) as store:
            assert len(store.shift_reports(unpushed_to="mqtt")) == 1
        broker.start()
        late = Subscriber(broker.port, client_id="late", clean=True)
        topics = Topics("edgeinspect", LINE)
        wait_until(lambda: late.on(topics.shift_report()), 15, "the retained shift report")
        assert late.on(topics.shift_report())[-1] == report
        wait_until(lambda: late.on(topics.camera_health("st-1", "cam-1")), 5, "retained camera health")
        health = late.on(topics.camera_health("st-1", "cam-1"))[-1]
        assert (health["captured"], health["reconnects"], health["underruns"]) == (5, 1, 2)
        assert health["source_frame_id"] == 41
        late.close()

        def unpublished() -> int:
            with RecordStore(db) as store:
                return len(store.shift_reports(unpushed_to="mqtt"))

        wait_until(lambda: unpublished() == 0, 5, "the report marked published")
    finally:
        output.stop()


def test_results_over_mutual_tls(tmp_path: Path) -> None:
    """A TLS listener that requires a client certificate issued by the plant CA: the output, given the CA,
    its certificate and key, connects and every result arrives; a client without a certificate does not
    get in."""
    tls = make_tls_files(tmp_path / "tls")
    broker = Mosquitto(tmp_path / "broker", tls=tls, require_certificate=True)
    broker.start()
    sub = Subscriber(broker.port, tls=tls)
    metrics = InspectorMetrics()
    output = make_output(
        tmp_path,
        broker.port,
        metrics,
        ca_file=tls.ca_cert,
        client_cert=tls.client_cert,
        client_key=tls.client_key,
    )
    results = [make_result(i, verdict="NG" if i == 1 else "OK") for i in range(3)]
    output.start()
    try:
        record(tmp_path / "records.sqlite", *results)
        wait_until(lambda: len(set(sub.result_ids())) == 3, 15, "three results over TLS")
        assert sub.result_ids() == [r.result_id for r in results]
        wait_until(
            lambda: metrics.output_published.labels(output="mqtt")._value.get() == 3, 5, "3 acknowledged"
        )
        assert metrics.output_connected.labels(output="mqtt")._value.get() == 1

        # A client that trusts the CA but has no certificate: with TLS 1.3 the broker's refusal arrives as
        # an alert on the client's first read after the handshake.
        context = ssl.create_default_context(cafile=str(tls.ca_cert))
        with (
            socket.create_connection(("127.0.0.1", broker.port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as anonymous,
            pytest.raises(ssl.SSLError, match="certificate required"),
        ):
            anonymous.recv(1)
    finally:
        output.stop()
        sub.close()
        broker.stop()


def test_a_broker_certificate_the_ca_does_not_verify_is_counted_and_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The broker presents a certificate from another CA: no connection, every attempt counted as
    `tls_failed` and logged once with what to check, results wait in the record store; once the broker
    presents a certificate from the output's CA, the output connects by itself and they go out."""
    plant, other = make_tls_files(tmp_path / "plant"), make_tls_files(tmp_path / "other")
    broker = Mosquitto(tmp_path / "broker", tls=other)
    broker.start()
    metrics = InspectorMetrics()
    output = make_output(tmp_path, broker.port, metrics, ca_file=plant.ca_cert)
    record(tmp_path / "records.sqlite", *(make_result(i) for i in range(2)))
    errors = metrics.output_errors.labels(output="mqtt", reason="tls_failed")
    caplog.set_level(logging.WARNING, logger="edge_inspect.sinks.mqtt_output")
    output.start()
    try:
        wait_until(lambda: errors._value.get() >= 2, 15, "two refused TLS attempts")
        assert not output.connected()
        assert metrics.output_published.labels(output="mqtt")._value.get() == 0
        warnings = [r for r in caplog.records if r.getMessage() == "mqtt_connect_failed"]
        assert len(warnings) == 1  # the same cause again is not repeated at WARNING
        assert "mqtt.ca_file" in warnings[0].fields["error"]
        assert "(self-signed certificate in certificate chain)" in warnings[0].fields["error"]

        broker.stop()
        broker.tls = plant  # the broker's certificate fixed
        broker.start()
        wait_until(output.connected, 15, "the output to reconnect by itself")
        wait_until(
            lambda: metrics.output_published.labels(output="mqtt")._value.get() == 2, 5, "both results"
        )
    finally:
        output.stop()
        broker.stop()
