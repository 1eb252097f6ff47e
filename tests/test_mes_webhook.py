from __future__ import annotations

import dataclasses
import json
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import pytest

from edge_inspect.bus.contracts import InspectionResult, ModelRef, StageTimings
from edge_inspect.sinks.mes_webhook import (
    HttpReply,
    WebhookConfig,
    WebhookDeliverer,
    classify_status,
    deliver_once,
    idempotency_key,
    next_backoff,
    post_json,
)
from edge_inspect.sinks.metrics import InspectorMetrics
from edge_inspect.sinks.record_store import RecordStore

NOW = 1_714_564_800_000_000_000
SECOND = 1_000_000_000


def make_result(seq: int) -> InspectionResult:
    return InspectionResult(
        camera_id="cam1",
        seq=seq,
        part_id=f"P{seq}",
        station="st-1",
        t_capture_ns=NOW + seq,
        verdict="NG" if seq % 2 else "OK",
        score=0.25,
        threshold=0.5,
        defects=[],
        model=ModelRef("m", "1", "00" * 32),
        timings_ms=StageTimings(total=3.0),
    )


class Receiver:
    """A stand-in MES: answers with scripted statuses (then 200) and keeps each key's body once."""

    def __init__(self) -> None:
        self.script: list[int] = []
        self.default_status = 200
        self.requests: list[tuple[str, dict[str, object]]] = []
        self.accepted: dict[str, dict[str, object]] = {}
        self.content_types: set[str] = set()
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                key = self.headers["Idempotency-Key"]
                with receiver.lock:
                    receiver.content_types.add(self.headers["Content-Type"])
                    receiver.requests.append((key, body))
                    status = receiver.script.pop(0) if receiver.script else receiver.default_status
                    if 200 <= status < 300:
                        receiver.accepted.setdefault(key, body)
                payload = b'{"error": "part_id unknown to MES"}' if status == 400 else b"{}"
                self.send_response(status)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/mes/results"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    started = Receiver()
    yield started
    started.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RecordStore]:
    with RecordStore(tmp_path / "records.db") as opened:
        yield opened


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/mes"


def config(url: str, **overrides: float) -> WebhookConfig:
    settings = {"timeout_s": 2.0, "initial_backoff_s": 0.02, "max_backoff_s": 0.1, "batch": 8, **overrides}
    return WebhookConfig(url=url, **settings)


def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def test_next_backoff_doubles_with_jitter_and_caps() -> None:
    rng = random.Random(1)
    for attempts, nominal in [(1, 1.0), (2, 2.0), (3, 4.0), (6, 32.0), (7, 60.0), (10_000, 60.0)]:
        delays = [next_backoff(attempts, 1.0, 60.0, rng) for _ in range(200)]
        assert all(nominal / 2 <= d <= nominal for d in delays)
        assert max(delays) - min(delays) > nominal / 4  # jittered, not constant
    with pytest.raises(ValueError):
        next_backoff(0, 1.0, 60.0, rng)


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, "delivered"),
        (204, "delivered"),
        (408, "retry"),
        (425, "retry"),
        (429, "retry"),
        (500, "retry"),
        (503, "retry"),
        (301, "dead"),
        (400, "dead"),
        (401, "dead"),
        (404, "dead"),
        (422, "dead"),
    ],
)
def test_classify_status(status: int, outcome: str) -> None:
    assert classify_status(status) == outcome


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="http"):
        WebhookConfig(url="mes.local/results")
    with pytest.raises(ValueError, match="backoff"):
        WebhookConfig(url="http://mes.local", initial_backoff_s=10, max_backoff_s=1)


def test_delivers_with_idempotency_keys(store: RecordStore, receiver: Receiver) -> None:
    results = [make_result(i) for i in range(5)]
    store.add_results(results, with_outbox=True, now_ns=NOW)

    report = deliver_once(store, config(receiver.url), NOW)

    assert (report.delivered, report.retried, report.dead, report.halted) == (5, 0, 0, False)
    assert [key for key, _ in receiver.requests] == [r.result_id for r in results]
    assert [InspectionResult.from_dict(body) for _, body in receiver.requests] == results
    assert receiver.content_types == {"application/json"}
    assert store.outbox_counts() == {"pending": 0, "delivered": 5, "dead": 0}
    assert deliver_once(store, config(receiver.url), NOW).attempted == 0


def test_receiver_down_keeps_items_pending_with_backoff(store: RecordStore) -> None:
    results = [make_result(i) for i in range(3)]
    store.add_results(results, with_outbox=True, now_ns=NOW)
    cfg = config(closed_port_url(), initial_backoff_s=5.0, max_backoff_s=60.0)

    report = deliver_once(store, cfg, NOW)

    # The pass stops at the first refusal instead of hammering a dead receiver with the rest.
    assert (report.retried, report.halted, report.attempted) == (1, True, 1)
    assert store.outbox_counts() == {"pending": 3, "delivered": 0, "dead": 0}
    first = store.outbox_item(results[0].result_id)
    assert first is not None and first.attempts == 1 and "refused" in (first.last_error or "").lower()
    assert NOW + 2.5 * SECOND <= first.next_attempt_ns <= NOW + 5 * SECOND
    # Until its back-off has passed it is not due; the others still are.
    due_ids = [item.result_id for item in store.due_deliveries(NOW + 2 * SECOND, 10)]
    assert due_ids == [results[1].result_id, results[2].result_id]

    deliver_once(store, cfg, NOW + 6 * SECOND)
    again = store.outbox_item(results[1].result_id)
    assert again is not None and again.attempts == 1 and again.state == "pending"


def test_503_then_200_delivers_each_key(store: RecordStore, receiver: Receiver) -> None:
    results = [make_result(i) for i in range(3)]
    store.add_results(results, with_outbox=True, now_ns=NOW)
    receiver.script = [503, 503]
    cfg = config(receiver.url, initial_backoff_s=1.0, max_backoff_s=4.0)

    assert deliver_once(store, cfg, NOW).halted
    retried = store.outbox_item(results[0].result_id)
    assert retried is not None and retried.last_error is not None and "HTTP 503" in retried.last_error
    now = NOW
    while store.count_pending():
        now += 5 * SECOND
        deliver_once(store, cfg, now)

    keys = [key for key, _ in receiver.requests]
    assert keys.count(results[0].result_id) == 2  # refused once, then accepted
    assert set(receiver.accepted) == {r.result_id for r in results}
    assert [InspectionResult.from_dict(receiver.accepted[r.result_id]) for r in results] == results
    assert store.outbox_counts() == {"pending": 0, "delivered": 3, "dead": 0}


def test_400_goes_dead_with_reason_and_replay_hint(
    store: RecordStore, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    results = [make_result(i) for i in range(3)]
    store.add_results(results, with_outbox=True, now_ns=NOW)
    receiver.script = [200, 400]

    with caplog.at_level(logging.ERROR, logger="edge_inspect.sinks.mes_webhook"):
        report = deliver_once(store, config(receiver.url), NOW)

    # A dead item does not stop the pass: the next one is unrelated to this payload's problem.
    assert (report.delivered, report.dead, report.halted) == (2, 1, False)
    dead = store.outbox_item(results[1].result_id)
    assert dead is not None and dead.state == "dead"
    assert (
        dead.last_error is not None and "HTTP 400" in dead.last_error and "part_id unknown" in dead.last_error
    )
    [record] = [r for r in caplog.records if r.getMessage() == "mes_delivery_dead"]
    assert record.fields["result_id"] == results[1].result_id  # type: ignore[attr-defined]
    assert "--requeue-dead" in record.fields["replay"]  # type: ignore[attr-defined]

    assert store.requeue_dead(now_ns=NOW) == 1
    assert deliver_once(store, config(receiver.url), NOW).delivered == 1
    assert set(receiver.accepted) == {r.result_id for r in results}


class SimulatedCrash(BaseException):
    pass


def test_redelivery_after_crash_reuses_the_key(store: RecordStore, receiver: Receiver) -> None:
    result = make_result(1)
    store.add_results([result], with_outbox=True, now_ns=NOW)

    def post_then_crash(url: str, body: bytes, headers: Mapping[str, str], timeout_s: float) -> HttpReply:
        post_json(url, body, headers, timeout_s)
        raise SimulatedCrash  # killed after the MES got it, before the outbox was updated

    with pytest.raises(SimulatedCrash):
        deliver_once(store, config(receiver.url), NOW, post=post_then_crash)
    assert store.count_pending() == 1
    deliver_once(store, config(receiver.url), NOW)

    assert [key for key, _ in receiver.requests] == [result.result_id, result.result_id]
    assert list(receiver.accepted) == [result.result_id]  # the MES de-duplicates by key
    assert store.outbox_counts()["delivered"] == 1


def test_deliverer_thread_survives_and_restart_delivers_the_rest(tmp_path: Path, receiver: Receiver) -> None:
    db = tmp_path / "records.db"
    results = [make_result(i) for i in range(20)]
    with RecordStore(db) as inspector_store:
        inspector_store.add_results(results[:10], with_outbox=True)

    receiver.default_status = 503
    metrics = InspectorMetrics()
    first = WebhookDeliverer(db, config(receiver.url), metrics=metrics, idle_poll_s=0.02)
    first.start()
    wait_for(lambda: len(receiver.requests) >= 3)
    first.stop(timeout_s=5)
    assert not first.running
    assert receiver.accepted == {}
    retries = metrics.registry.get_sample_value("edgeinspect_mes_deliveries_total", {"outcome": "retry"})
    assert retries is not None and retries >= 3

    # The inspector restarts: more results arrive while no deliverer runs, then a new one starts.
    with RecordStore(db) as inspector_store:
        inspector_store.add_results(results[10:], with_outbox=True)
    receiver.default_status = 200
    second = WebhookDeliverer(db, config(receiver.url), metrics=metrics, idle_poll_s=0.02)
    second.start()
    try:
        wait_for(lambda: len(receiver.accepted) == 20)
    finally:
        second.stop(timeout_s=5)

    assert set(receiver.accepted) == {r.result_id for r in results}
    with RecordStore(db) as check:
        assert check.outbox_counts() == {"pending": 0, "delivered": 20, "dead": 0}
    assert metrics.registry.get_sample_value("edgeinspect_mes_outbox_pending") == 0
    assert (
        metrics.registry.get_sample_value("edgeinspect_mes_deliveries_total", {"outcome": "delivered"}) == 20
    )


def test_deliverer_logs_errors_and_keeps_going(
    tmp_path: Path, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "records.db"
    with RecordStore(db) as inspector_store:
        inspector_store.add_results([make_result(1), make_result(2)], with_outbox=True)
    calls = 0

    def flaky_post(url: str, body: bytes, headers: Mapping[str, str], timeout_s: float) -> HttpReply:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("bug in a proxy library")
        return post_json(url, body, headers, timeout_s)

    deliverer = WebhookDeliverer(db, config(receiver.url), post=flaky_post, idle_poll_s=0.02)
    with caplog.at_level(logging.ERROR, logger="edge_inspect.sinks.mes_webhook"):
        deliverer.start()
        try:
            wait_for(lambda: len(receiver.accepted) == 2)
        finally:
            deliverer.stop(timeout_s=5)
    assert any(r.getMessage() == "mes_deliverer_error" for r in caplog.records)


def test_wake_delivers_without_waiting_for_the_idle_poll(tmp_path: Path, receiver: Receiver) -> None:
    db = tmp_path / "records.db"
    deliverer = WebhookDeliverer(db, config(receiver.url), idle_poll_s=30.0)
    with RecordStore(db) as inspector_store:
        deliverer.start()
        try:
            time.sleep(0.1)  # let it go idle on the empty outbox
            inspector_store.add_results([make_result(1)], with_outbox=True)
            deliverer.wake()
            wait_for(lambda: len(receiver.accepted) == 1, timeout_s=5)
        finally:
            deliverer.stop(timeout_s=5)


def test_a_camera_id_in_any_script_is_delivered_and_holds_nobody_back(
    store: RecordStore, receiver: Receiver
) -> None:
    # A Japanese station name once raised UnicodeEncodeError on the header at every retry, forever.
    odd = dataclasses.replace(make_result(0), camera_id="検査-3", result_id="")
    results = [odd, make_result(1)]
    store.add_results(results, with_outbox=True, now_ns=NOW)

    report = deliver_once(store, config(receiver.url), NOW)

    assert (report.delivered, report.dead) == (2, 0)
    keys = [key for key, _ in receiver.requests]
    assert keys == [idempotency_key(odd.result_id), results[1].result_id]
    assert unquote(keys[0]) == odd.result_id and keys[0].isascii()
    assert idempotency_key("cam1:42:3") == "cam1:42:3"
