from __future__ import annotations

import dataclasses
import hmac
import json
import logging
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from edge_inspect.bus.contracts import InspectionResult, ModelRef, StageTimings
from edge_inspect.inspector.config import ConfigError, MesConfig, build_config
from edge_inspect.sinks import mes_webhook
from edge_inspect.sinks.mes_webhook import (
    HttpReply,
    WebhookConfig,
    WebhookDeliverer,
    classify_status,
    deliver_once,
    idempotency_key,
    next_backoff,
    post_json,
    signature,
)
from edge_inspect.sinks.metrics import InspectorMetrics
from edge_inspect.sinks.record_store import RecordStore
from tests.helpers import run_benchmark
from tests.tls_peers import TlsFiles, make_tls_files

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
    """A stand-in MES: answers with scripted statuses (then 200) and keeps each key's body once.

    HTTP/1.1 with keep-alive, over TLS when given a server context; `poison` answers one key with a
    fixed status every time. Every request's headers, raw body and client port are kept.
    """

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.script: list[int] = []
        self.default_status = 200
        self.poison: dict[str, int] = {}
        self.requests: list[tuple[str, dict[str, object]]] = []
        self.headers: list[dict[str, str]] = []
        self.raw_bodies: list[bytes] = []
        self.client_ports: list[int] = []
        self.accepted: dict[str, dict[str, object]] = {}
        self.content_types: set[str] = set()
        self.handshake_errors: list[str] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                body = json.loads(raw)
                key = self.headers["Idempotency-Key"]
                with receiver.lock:
                    receiver.content_types.add(self.headers["Content-Type"])
                    receiver.requests.append((key, body))
                    receiver.headers.append(dict(self.headers.items()))
                    receiver.raw_bodies.append(raw)
                    receiver.client_ports.append(self.client_address[1])
                    if key in receiver.poison:
                        status = receiver.poison[key]
                    else:
                        status = receiver.script.pop(0) if receiver.script else receiver.default_status
                    if 200 <= status < 300:
                        receiver.accepted.setdefault(key, body)
                payload = b'{"error": "part_id unknown to MES"}' if status == 400 else b"{}"
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", "/elsewhere")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            # Kept-alive connections must not make close() wait for their threads.
            daemon_threads = True
            block_on_close = False

            def finish_request(self, request: socket.socket, client_address: tuple[str, int]) -> None:
                # As real servers do; without it every response waits out the client's delayed ACK.
                request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if tls is None:
                    super().finish_request(request, client_address)
                    return
                try:  # the handshake in the connection's own thread, not the accepting one
                    wrapped = tls.wrap_socket(request, server_side=True)
                except OSError as exc:
                    with receiver.lock:
                        receiver.handshake_errors.append(str(exc))
                    return
                with wrapped:
                    super().finish_request(wrapped, client_address)

        self.server = Server(("127.0.0.1", 0), Handler)
        scheme = "https" if tls is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_port}/mes/results"
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


def config(url: str, **overrides: Any) -> WebhookConfig:
    settings = {
        "read_timeout_s": 2.0,
        "initial_backoff_s": 0.02,
        "max_backoff_s": 0.1,
        "batch": 8,
        **overrides,
    }
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


# -- TLS, authentication, bounded attempts, poisoned rows ------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def tls_receiver(tls_files: TlsFiles) -> Iterator[Receiver]:
    started = Receiver(tls=tls_files.server_context())
    yield started
    started.close()


@pytest.fixture
def mtls_receiver(tls_files: TlsFiles) -> Iterator[Receiver]:
    started = Receiver(tls=tls_files.server_context(require_client_cert=True))
    yield started
    started.close()


def test_tls_is_verified_by_default_and_ca_file_trusts_the_plants_ca(
    store: RecordStore, tls_receiver: Receiver, tls_files: TlsFiles
) -> None:
    result = make_result(1)
    store.add_results([result], with_outbox=True, now_ns=NOW)

    # A certificate from a CA that is not trusted: no POST happens, the row waits for a retry.
    report = deliver_once(store, config(tls_receiver.url), NOW)
    assert (report.delivered, report.retried, report.halted) == (0, 1, True)
    item = store.outbox_item(result.result_id)
    assert item is not None and item.state == "pending" and item.attempts == 1
    assert "CERTIFICATE_VERIFY_FAILED" in (item.last_error or "")
    assert tls_receiver.requests == []

    report = deliver_once(store, config(tls_receiver.url, ca_file=tls_files.ca_cert), NOW + 10 * SECOND)
    assert report.delivered == 1
    assert list(tls_receiver.accepted) == [result.result_id]


def test_mutual_tls_needs_the_client_certificate(
    store: RecordStore, mtls_receiver: Receiver, tls_files: TlsFiles
) -> None:
    results = [make_result(1), make_result(2)]
    store.add_results(results, with_outbox=True, now_ns=NOW)

    without = deliver_once(store, config(mtls_receiver.url, ca_file=tls_files.ca_cert), NOW)
    assert (without.delivered, without.retried) == (0, 1)
    assert mtls_receiver.requests == [] and mtls_receiver.handshake_errors

    with_cert = config(
        mtls_receiver.url,
        ca_file=tls_files.ca_cert,
        client_cert=tls_files.client_cert,
        client_key=tls_files.client_key,
    )
    assert deliver_once(store, with_cert, NOW + 10 * SECOND).delivered == 2
    # The key may also sit in the certificate's own file.
    store.add_results([make_result(3)], with_outbox=True, now_ns=NOW)
    combined = config(mtls_receiver.url, ca_file=tls_files.ca_cert, client_cert=tls_files.client_combined)
    assert deliver_once(store, combined, NOW + 10 * SECOND).delivered == 1
    assert set(mtls_receiver.accepted) == {r.result_id for r in [*results, make_result(3)]}


def test_bearer_token_and_hmac_signature_arrive_and_verify(
    tmp_path: Path, store: RecordStore, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "hmac.key").write_bytes(b"s3cret-signing-key\n")
    monkeypatch.setenv("EDGE_TEST_MES_TOKEN", "tok-123.abc")
    mes = MesConfig(url=receiver.url, token_env="EDGE_TEST_MES_TOKEN", hmac_key_file=tmp_path / "hmac.key")
    cfg = WebhookConfig.from_mes(mes)
    assert "tok-123" not in repr(cfg) and "s3cret" not in repr(cfg)  # secrets stay out of logs
    result = dataclasses.replace(make_result(0), camera_id="検査-3", result_id="")
    store.add_results([result], with_outbox=True, now_ns=NOW)

    before = int(time.time())
    assert deliver_once(store, cfg, NOW).delivered == 1

    [headers] = receiver.headers
    [raw] = receiver.raw_bodies
    assert headers["Authorization"] == "Bearer tok-123.abc"
    timestamp = headers["X-EdgeInspect-Timestamp"]
    assert before <= int(timestamp) <= time.time() + 1
    key = headers["Idempotency-Key"]
    assert unquote(key) == result.result_id
    # What a receiver does, from the module docstring; the file's trailing newline is not part of the key.
    expected = hmac.new(b"s3cret-signing-key", f"{timestamp}\n{key}\n".encode() + raw, "sha256").hexdigest()
    assert hmac.compare_digest(headers["X-EdgeInspect-Signature"], f"sha256={expected}")
    assert signature(b"s3cret-signing-key", timestamp, key, raw) == f"sha256={expected}"

    # The token from a file works the same; the deliverer takes the MesConfig itself.
    (tmp_path / "token").write_text("tok-from-file\n")
    db = tmp_path / "records.db"
    store.add_results([make_result(5)], with_outbox=True)
    deliverer = WebhookDeliverer(
        db, MesConfig(url=receiver.url, token_file=tmp_path / "token"), idle_poll_s=0.02
    )
    deliverer.start()
    try:
        wait_for(lambda: len(receiver.accepted) == 2)
    finally:
        deliverer.stop(timeout_s=5)
    assert receiver.headers[-1]["Authorization"] == "Bearer tok-from-file"
    assert "X-EdgeInspect-Signature" not in receiver.headers[-1]


def test_max_attempts_turns_a_row_into_a_dead_letter(store: RecordStore, receiver: Receiver) -> None:
    result = make_result(1)
    store.add_results([result], with_outbox=True, now_ns=NOW)
    receiver.default_status = 503
    cfg = config(receiver.url, max_attempts=3, initial_backoff_s=1.0, max_backoff_s=2.0)

    reports = [deliver_once(store, cfg, NOW + i * 10 * SECOND) for i in range(5)]

    assert [(r.retried, r.dead) for r in reports] == [(1, 0), (1, 0), (0, 1), (0, 0), (0, 0)]
    assert len(receiver.requests) == 3
    [dead] = store.dead_deliveries()
    assert dead.result_id == result.result_id and dead.attempts == 3
    assert dead.last_error is not None and "HTTP 503" in dead.last_error and "3 attempts" in dead.last_error
    assert store.count_dead() == 1 and store.count_pending() == 0

    # Requeued, it gets max_attempts afresh.
    receiver.default_status = 200
    assert store.requeue_dead([result.result_id], now_ns=NOW) == 1
    assert deliver_once(store, cfg, NOW + 60 * SECOND).delivered == 1
    assert store.outbox_counts() == {"pending": 0, "delivered": 1, "dead": 0}


def test_a_poisoned_row_does_not_hold_back_the_rows_behind_it(store: RecordStore, receiver: Receiver) -> None:
    results = [make_result(i) for i in range(4)]
    store.add_results(results, with_outbox=True, now_ns=NOW)
    receiver.poison[results[0].result_id] = 500  # the MES fails on this one payload, every time
    cfg = config(receiver.url, max_attempts=3, initial_backoff_s=1.0, max_backoff_s=2.0)

    # It halts the pass it is in (a 500 may well be the receiver's health)...
    first = deliver_once(store, cfg, NOW)
    assert (first.delivered, first.retried, first.halted) == (0, 1, True)
    # ...but in back-off it is behind the others, which go through on the very next pass.
    assert deliver_once(store, cfg, NOW).delivered == 3
    now = NOW
    while store.count_pending():
        now += 5 * SECOND
        deliver_once(store, cfg, now)

    assert set(receiver.accepted) == {r.result_id for r in results[1:]}
    assert [item.result_id for item in store.dead_deliveries()] == [results[0].result_id]


def test_per_row_failures_kill_that_row_only_and_the_pass_goes_on(
    store: RecordStore, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = [make_result(i) for i in range(5)]
    store.add_results(results, with_outbox=True, now_ns=NOW)
    receiver.poison[results[1].result_id] = 422
    original = mes_webhook.idempotency_key

    def key_that_breaks_for_row_3(result_id: str) -> str:
        if result_id == results[3].result_id:
            raise UnicodeEncodeError("utf-8", result_id, 0, 1, "surrogates not allowed")
        return original(result_id)

    monkeypatch.setattr(mes_webhook, "idempotency_key", key_that_breaks_for_row_3)

    report = deliver_once(store, config(receiver.url), NOW)

    assert (report.delivered, report.dead, report.retried, report.halted) == (3, 2, 0, False)
    assert set(receiver.accepted) == {results[i].result_id for i in (0, 2, 4)}
    dead = {item.result_id: item.last_error or "" for item in store.dead_deliveries()}
    assert "HTTP 422" in dead[results[1].result_id]
    assert "cannot build the request: UnicodeEncodeError" in dead[results[3].result_id]


def test_a_redirect_is_not_followed_and_not_a_delivery(store: RecordStore, receiver: Receiver) -> None:
    store.add_results([make_result(1)], with_outbox=True, now_ns=NOW)
    receiver.script = [302]

    report = deliver_once(store, config(receiver.url), NOW)

    assert (report.delivered, report.dead) == (0, 1)
    assert len(receiver.requests) == 1  # nothing went to /elsewhere
    [dead] = store.dead_deliveries()
    assert dead.last_error is not None and "HTTP 302" in dead.last_error


def test_the_deliverer_keeps_one_connection_and_publishes_dead_letters(
    tmp_path: Path, receiver: Receiver
) -> None:
    db = tmp_path / "records.db"
    results = [make_result(i) for i in range(40)]
    receiver.poison[results[7].result_id] = 400
    with RecordStore(db) as inspector_store:
        inspector_store.add_results(results, with_outbox=True)
    metrics = InspectorMetrics()
    deliverer = WebhookDeliverer(db, config(receiver.url), metrics=metrics, idle_poll_s=0.02)
    deliverer.start()
    try:
        wait_for(lambda: metrics.registry.get_sample_value("edgeinspect_mes_outbox_dead") == 1)
        wait_for(lambda: len(receiver.accepted) == 39)
    finally:
        deliverer.stop(timeout_s=5)
    assert len(set(receiver.client_ports)) == 1  # kept alive: one TCP connection for all 40 POSTs
    assert metrics.registry.get_sample_value("edgeinspect_mes_deliveries_total", {"outcome": "dead"}) == 1


def test_mes_config_checks_files_and_secrets_at_start_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = "https://mes.example/results"
    with pytest.raises(ConfigError, match=r"mes\.ca_file: .*missing\.pem is not a file"):
        build_config(
            {"model": {"package": "m"}, "mes": {"url": url, "ca_file": str(tmp_path / "missing.pem")}}
        )
    monkeypatch.delenv("EDGE_TEST_UNSET", raising=False)
    with pytest.raises(ValueError, match="EDGE_TEST_UNSET"):
        MesConfig(url=url, token_env="EDGE_TEST_UNSET")
    (tmp_path / "t").write_text("x")
    with pytest.raises(ValueError, match="not both"):
        MesConfig(url=url, token_env="HOME", token_file=tmp_path / "t")
    with pytest.raises(ValueError, match=r"client_key needs mes\.client_cert"):
        MesConfig(url=url, client_key=tmp_path / "t")
    with pytest.raises(ValueError, match="must be an absolute http"):
        MesConfig(url="mes.example/results")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match=r"mes\.hmac_key_file: .* is empty"):
        WebhookConfig.from_mes(MesConfig(url=url, hmac_key_file=tmp_path / "empty"))
    (tmp_path / "not-pem").write_text("hello")
    with pytest.raises(ValueError, match=r"mes\.ca_file: cannot load"):
        WebhookDeliverer(tmp_path / "r.db", MesConfig(url=url, ca_file=tmp_path / "not-pem"))
    with pytest.raises(ValueError, match=r"mes\.url is not set"):
        WebhookConfig.from_mes(MesConfig())

    # One place for the defaults: a WebhookConfig from an empty [mes] equals one built directly.
    assert WebhookConfig.from_mes(MesConfig(url=url)) == WebhookConfig(url=url)
    # A short max_backoff_s pulls the default initial back-off down with it instead of failing.
    assert WebhookConfig.from_mes(MesConfig(url=url, max_backoff_s=0.5)).initial_backoff_s == 0.5


def test_the_throughput_benchmark_runs_and_delivers_everything() -> None:
    report = run_benchmark("benchmarks.mes_throughput", "--results", "200", "--batch", "16", timeout=120)
    assert (report["results"], report["posts"], report["connections"]) == (200, 200, 1)
    assert report["results_per_s"] > 0
