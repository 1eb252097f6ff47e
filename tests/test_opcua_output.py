"""The OPC UA output against asyncua's own client on loopback: current state for a client that connects
late, every result as an event in order, the reject signal for NG, stale NGs kept off it, restarts; and
security: Basic256Sha256 SignAndEncrypt with a trust list, None and untrusted clients refused."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client, ua
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from pydantic import ValidationError

from edge_inspect.inspector.config import OpcUaConfig
from edge_inspect.sinks.metrics import InspectorMetrics
from edge_inspect.sinks.opcua_output import OpcUaOutput, node_path, server_identity
from tests.output_peers import free_port, make_result, record
from tests.tls_peers import OpcUaPki, make_opcua_pki

LINE = "L1"
URI = "urn:edgeinspect"


def make_output(tmp_path: Path, port: int, metrics: InspectorMetrics | None = None) -> OpcUaOutput:
    config = OpcUaConfig(endpoint=f"opc.tcp://127.0.0.1:{port}/edgeinspect/", line=LINE, reject_pulse_ms=300)
    return OpcUaOutput(config, tmp_path / "records.sqlite", tmp_path / "outputs.sqlite", metrics)


class Handler:
    """Collects what the subscription delivers, with the time it arrived."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self.changes: list[tuple[str, Any, float]] = []

    def event_notification(self, event: Any) -> None:
        self.events.append(event)

    def datachange_notification(self, node: Any, value: Any, data: Any) -> None:
        self.changes.append((node.nodeid.Identifier, value, time.monotonic()))

    def values(self, path: str) -> list[Any]:
        return [value for ident, value, _ in self.changes if ident == path]


async def wait_for(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.02)


class Station:
    """Reads of one station's nodes through a client."""

    def __init__(self, client: Client, idx: int, station: str) -> None:
        self.client, self.idx, self.station = client, idx, station

    def node(self, *path: str) -> Any:
        return self.client.get_node(ua.NodeId(node_path(LINE, self.station, *path), self.idx))

    async def read(self, *path: str) -> Any:
        return await self.node(*path).read_value()


async def connect(port: int) -> tuple[Client, int]:
    client = Client(f"opc.tcp://127.0.0.1:{port}/edgeinspect/", timeout=10)
    await client.connect()
    return client, await client.get_namespace_index(URI)


async def subscribe(client: Client, station: Station, handler: Handler) -> Any:
    subscription = await client.create_subscription(20, handler)
    event_type = await client.nodes.base_event_type.get_child(f"{station.idx}:ResultReadyEventType")
    await subscription.subscribe_events(station.node(), event_type, queuesize=1000)
    await subscription.subscribe_data_change(
        [station.node("Reject", "Count"), station.node("Reject", "Active")], queuesize=100
    )
    return subscription


def test_a_client_sees_every_result_and_the_reject_signal(tmp_path: Path) -> None:
    db, port, metrics = tmp_path / "records.sqlite", free_port(), InspectorMetrics()
    early = [make_result(0), make_result(1, verdict="REVIEW")]
    record(db, *early)
    output = make_output(tmp_path, port, metrics)
    output.start()
    try:
        asyncio.run(_client_sees_everything(db, port, early))
        assert metrics.output_published.labels(output="opcua")._value.get() == 2 + 6 + 1
        assert metrics.output_connected.labels(output="opcua")._value.get() == 1
    finally:
        output.stop()


async def _client_sees_everything(db: Path, port: int, early: list[Any]) -> None:
    client, idx = await connect(port)
    try:
        station = Station(client, idx, "st-1")
        # A client connecting after the results were recorded reads the current state.
        assert await station.read("LastResult", "ResultId") == early[-1].result_id
        assert await station.read("LastResult", "Verdict") == "REVIEW"
        assert await station.read("Counts", "Total") == 2
        assert await station.read("Cameras", "cam-1", "Online") is True
        handler = Handler()
        await subscribe(client, station, handler)
        await asyncio.sleep(0.3)
        verdicts = ["OK", "NG", "OK", "NG", "NG", "OK"]
        results = [make_result(10 + i, verdict=v) for i, v in enumerate(verdicts)]
        for result in results:
            record(db, result)
            await asyncio.sleep(0.05)
        committed = time.monotonic()
        await wait_for(lambda: len(handler.events) >= 6, 10, "six ResultReady events")
        # Every result, once each, in record order.
        assert [event.ResultId for event in handler.events] == [r.result_id for r in results]
        assert [event.Verdict for event in handler.events] == verdicts
        assert handler.events[1].DefectClasses == "crack"
        sequences = [event.Sequence for event in handler.events]
        assert sequences == sorted(sequences)
        await wait_for(lambda: 3 in handler.values(station.node("Reject", "Count").nodeid.Identifier), 5, "3")
        assert await station.read("Reject", "ResultId") == results[4].result_id
        assert await station.read("Reject", "PartId") == results[4].part_id
        active = handler.values(station.node("Reject", "Active").nodeid.Identifier)
        assert True in active
        # The pulse clears itself reject_pulse_ms after the last NG.
        await asyncio.sleep(max(0.0, committed + 1.0 - time.monotonic()))
        assert await station.read("Reject", "Active") is False
        assert await station.read("Counts", "NG") == 3
        assert await station.read("Counts", "Total") == 8
        # An NG captured a minute ago (a replay) is counted, but never drives the reject output.
        record(db, make_result(99, verdict="NG", t_ns=time.time_ns() - 60 * 10**9))
        await wait_for(lambda: len(handler.events) >= 7, 10, "the stale NG's event")
        assert await station.read("Reject", "StaleCount") == 1
        assert await station.read("Reject", "Count") == 3
    finally:
        await client.disconnect()


def test_reject_signal_timing(tmp_path: Path) -> None:
    db, port = tmp_path / "records.sqlite", free_port()
    output = make_output(tmp_path, port)
    output.start()
    try:
        latencies = asyncio.run(_reject_latencies(db, port))
    finally:
        output.stop()
    # docs/outputs.md promises the reject within poll_ms (20 ms) plus the writes of the record commit;
    # a client also waits for its subscription's publishing interval (20 ms here). Loose on a busy CI.
    assert max(latencies) < 1.0, latencies


async def _reject_latencies(db: Path, port: int) -> list[float]:
    client, idx = await connect(port)
    try:
        station = Station(client, idx, "st-1")
        record(db, make_result(0))
        await asyncio.sleep(0.5)  # the station's nodes exist from the first result on
        handler = Handler()
        await subscribe(client, station, handler)
        await asyncio.sleep(0.3)
        count_id = station.node("Reject", "Count").nodeid.Identifier
        latencies = []
        for i in range(1, 6):
            committed = time.monotonic()
            record(db, make_result(i, verdict="NG"))
            await wait_for(lambda i=i: i in handler.values(count_id), 5, f"reject {i}")
            seen = next(t for ident, v, t in handler.changes if ident == count_id and v == i)
            latencies.append(seen - committed)
            await asyncio.sleep(0.4)
        return latencies
    finally:
        await client.disconnect()


def test_restart_keeps_state_and_applies_what_was_recorded_meanwhile(tmp_path: Path) -> None:
    db, port = tmp_path / "records.sqlite", free_port()
    camera = "cam/7"  # a separator in an id stays one node path level
    output = make_output(tmp_path, port)
    output.start()
    record(db, *(make_result(i, camera=camera, verdict="NG" if i == 1 else "OK") for i in range(3)))
    time.sleep(0.5)
    output.stop()
    # While the server is down; the NG is a minute old when the server comes back: a replay.
    minute_ago = time.time_ns() - 60 * 10**9
    later = [make_result(3, camera=camera), make_result(4, camera=camera, verdict="NG", t_ns=minute_ago)]
    record(db, *later)
    output = make_output(tmp_path, port)
    output.start()
    try:
        asyncio.run(_after_restart(db, port, camera, later))
    finally:
        output.stop()


async def _after_restart(db: Path, port: int, camera: str, later: list[Any]) -> None:
    client, idx = await connect(port)
    try:
        station = Station(client, idx, "st-1")
        # Counted once each across the restart, from the persisted state plus what was recorded meanwhile.
        assert await station.read("Counts", "Total") == 5
        assert await station.read("Counts", "NG") == 2
        assert await station.read("Reject", "Count") == 1
        assert await station.read("Reject", "StaleCount") == 1
        assert await station.read("LastResult", "ResultId") == later[-1].result_id
        assert await station.read("Cameras", camera, "LastResultId") == later[-1].result_id
        handler = Handler()
        await subscribe(client, station, handler)
        await asyncio.sleep(0.3)
        newest = make_result(5, camera=camera)
        record(db, newest)
        await wait_for(lambda: handler.events, 10, "an event after the restart")
        assert [event.ResultId for event in handler.events] == [newest.result_id]
    finally:
        await client.disconnect()


def test_a_taken_port_fails_start(tmp_path: Path) -> None:
    port = free_port()
    first = make_output(tmp_path, port)
    first.start()
    try:
        second = make_output(tmp_path / "other", port)
        with pytest.raises(RuntimeError, match="did not start"):
            second.start()
    finally:
        first.stop()


def test_camera_health_reaches_a_client(tmp_path: Path) -> None:
    """The gateway's device counters and the last-frame time, from the record store, on the camera's nodes."""
    from edge_inspect.bus.contracts import CameraHealth
    from edge_inspect.sinks.record_store import CameraReading, RecordStore

    db, port = tmp_path / "records.sqlite", free_port()
    record(db, make_result(0, camera="cam-h"))
    output = make_output(tmp_path, port)
    output.start()
    try:
        seen_ns = time.time_ns()
        with RecordStore(db) as store:
            store.save_camera_health([CameraReading("cam-h", "st-1", seen_ns, 9, CameraHealth(9, 2, 3, 1))])
        asyncio.run(_camera_health(port, seen_ns))
    finally:
        output.stop()


async def _camera_health(port: int, seen_ns: int) -> None:
    client, idx = await connect(port)
    try:
        station = Station(client, idx, "st-1")
        deadline = time.monotonic() + 10
        while await station.read("Cameras", "cam-h", "FramesCaptured") != 9:
            assert time.monotonic() < deadline, "camera health never reached the OPC UA nodes"
            await asyncio.sleep(0.1)
        counters = [await station.read("Cameras", "cam-h", name) for name in ("Reconnects", "Underruns")]
        assert counters == [2, 3]
        assert await station.read("Cameras", "cam-h", "StaleEvents") == 1
        last = await station.read("Cameras", "cam-h", "LastFrameTime")
        assert abs(last.timestamp() - seen_ns / 1e9) < 0.01
    finally:
        await client.disconnect()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> OpcUaPki:
    return make_opcua_pki(tmp_path_factory.mktemp("opcua-pki"))


def secure_config(pki: OpcUaPki, port: int, **extra: Any) -> OpcUaConfig:
    return OpcUaConfig(
        endpoint=f"opc.tcp://127.0.0.1:{port}/edgeinspect/",
        line=LINE,
        certificate=pki.server_cert,
        private_key=pki.server_key,
        trusted_clients_dir=pki.trusted_dir,
        **extra,
    )


def test_security_settings_are_checked_before_anything_serves(pki: OpcUaPki, tmp_path: Path) -> None:
    exposed = "opc.tcp://0.0.0.0:4840/edgeinspect/"
    with pytest.raises(ValidationError, match=r"must be secured: set opcua\.certificate"):
        OpcUaConfig(endpoint=exposed)
    # Unencrypted beyond loopback only when asked for by name (a PLC that speaks no security policy).
    assert OpcUaConfig(endpoint=exposed, security=("None",)).policies == ("None",)
    assert OpcUaConfig(endpoint="opc.tcp://127.0.0.1:4840/").policies == ("None",)
    secured = secure_config(pki, 4840)
    assert secured.policies == ("Basic256Sha256_SignAndEncrypt",)
    with pytest.raises(ValidationError, match="needs the server's own certificate"):
        OpcUaConfig(endpoint=exposed, security=("Basic256Sha256_SignAndEncrypt",))
    with pytest.raises(ValidationError, match=r"needs opcua\.trusted_clients_dir"):
        OpcUaConfig(endpoint=exposed, certificate=pki.server_cert, private_key=pki.server_key)
    with pytest.raises(ValidationError, match="go together"):
        OpcUaConfig(endpoint=exposed, certificate=pki.server_cert, trusted_clients_dir=pki.trusted_dir)
    empty = tmp_path / "no-certificates"
    empty.mkdir()
    with pytest.raises(ValidationError, match="holds no"):
        OpcUaConfig(certificate=pki.server_cert, private_key=pki.server_key, trusted_clients_dir=empty)
    with pytest.raises(ValidationError, match="offers only"):
        secure_config(pki, 4840, security=("None",))
    with pytest.raises(ValidationError, match="Basic256Sha256_SignAndEncrypt"):  # SHA-1: deprecated, refused
        secure_config(pki, 4840, security=("Basic128Rsa15_SignAndEncrypt",))
    # A key that is not the certificate's fails the start, saying so.
    with pytest.raises(ValueError, match="is not the private key of"):
        server_identity(pki.server_cert, pki.client_key)


async def secure_client(url: str, pki: OpcUaPki, certificate: Path, key: Path) -> Client:
    client = Client(url, timeout=10)
    client.application_uri = pki.client_uri
    await client.set_security(
        SecurityPolicyBasic256Sha256, str(certificate), str(key), mode=ua.MessageSecurityMode.SignAndEncrypt
    )
    return client


async def session_ignoring_endpoints(client: Client, url: str) -> None:
    """What a hostile client does: a session over its own secure channel (None unless `set_security`
    was called), naming no certificate in CreateSession and skipping the check of the server's
    endpoints that asyncua's `connect` makes. Raises when the server refuses."""
    await client.connect_socket()
    await client.send_hello()
    await client.open_secure_channel()
    description = ua.ApplicationDescription()
    description.ApplicationUri, description.ApplicationType = (
        client.application_uri,
        ua.ApplicationType.Client,
    )
    create = ua.CreateSessionParameters()
    create.ClientDescription, create.EndpointUrl, create.SessionName = description, url, "hostile"
    create.ClientNonce, create.RequestedSessionTimeout = b"n" * 32, 10_000
    session = await client.uaclient.create_session(create)
    activate = ua.ActivateSessionParameters()
    policy = client.security_policy
    challenge = (session.ServerCertificate or b"") + session.ServerNonce
    activate.ClientSignature.Signature = policy.asymmetric_cryptography.signature(challenge)
    activate.ClientSignature.Algorithm = policy.AsymmetricSignatureURI
    activate.UserIdentityToken = ua.AnonymousIdentityToken(PolicyId="anonymous")
    await client.uaclient.activate_session(activate)


def test_only_trusted_clients_read_a_secured_server(tmp_path: Path, pki: OpcUaPki) -> None:
    """Basic256Sha256 SignAndEncrypt only: a client whose certificate the plant CA issued reads over it;
    a None client and a client with a self-made certificate are refused, also when they skip the
    client-side checks, and each refusal is counted."""
    db, port, metrics = tmp_path / "records.sqlite", free_port(), InspectorMetrics()
    result = make_result(0, verdict="NG")
    record(db, result)
    # The reject's freshness is not under test: a loaded machine may take seconds to start a secure server.
    config = secure_config(pki, port, reject_max_age_ms=120_000)
    output = OpcUaOutput(config, db, tmp_path / "outputs.sqlite", metrics)
    output.start()
    try:
        asyncio.run(_only_trusted_clients(f"opc.tcp://127.0.0.1:{port}/edgeinspect/", pki, result.result_id))
        refused = metrics.output_errors.labels(output="opcua", reason="client_refused")._value.get()
        assert refused == 3  # the rogue certificate at CreateSession, then both hostile sessions
    finally:
        output.stop()


async def _only_trusted_clients(url: str, pki: OpcUaPki, result_id: str) -> None:
    client = await secure_client(url, pki, pki.client_cert, pki.client_key)
    async with client:
        assert client.security_policy.Mode == ua.MessageSecurityMode.SignAndEncrypt
        idx = await client.get_namespace_index(URI)
        assert await Station(client, idx, "st-1").read("LastResult", "ResultId") == result_id
        assert await Station(client, idx, "st-1").read("Reject", "StaleCount") == 0
        endpoints = await client.get_endpoints()
        assert {(e.SecurityPolicyUri, e.SecurityMode) for e in endpoints} == {
            (SecurityPolicyBasic256Sha256.URI, ua.MessageSecurityMode.SignAndEncrypt)
        }
        # The server presents its application URI, taken from its certificate.
        assert {e.Server.ApplicationUri for e in endpoints} == {pki.server_uri}

    with pytest.raises(ua.UaError, match="No matching endpoints"):  # a well-behaved None client
        await Client(url, timeout=10).connect()
    rogue = await secure_client(url, pki, pki.rogue_cert, pki.rogue_key)
    with pytest.raises(ua.UaStatusCodeError, match="BadCertificateUntrusted"):
        await rogue.connect()
    await rogue.disconnect()
    for hostile in (Client(url, timeout=10), await secure_client(url, pki, pki.rogue_cert, pki.rogue_key)):
        hostile.application_uri = pki.client_uri
        with pytest.raises(ua.UaStatusCodeError, match="BadUserAccessDenied"):
            await session_ignoring_endpoints(hostile, url)
        hostile.disconnect_socket()


def test_none_listed_beside_a_secure_policy_serves_both(tmp_path: Path, pki: OpcUaPki) -> None:
    db, port = tmp_path / "records.sqlite", free_port()
    result = make_result(0)
    record(db, result)
    config = secure_config(pki, port, security=("Basic256Sha256_SignAndEncrypt", "None"))
    output = OpcUaOutput(config, db, tmp_path / "outputs.sqlite")
    output.start()
    try:
        asyncio.run(_both(f"opc.tcp://127.0.0.1:{port}/edgeinspect/", pki, result.result_id))
    finally:
        output.stop()


async def _both(url: str, pki: OpcUaPki, result_id: str) -> None:
    for client in (Client(url, timeout=10), await secure_client(url, pki, pki.client_cert, pki.client_key)):
        async with client:
            idx = await client.get_namespace_index(URI)
            assert await Station(client, idx, "st-1").read("LastResult", "ResultId") == result_id
