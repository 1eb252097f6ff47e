"""The OPC UA output: an asyncua server with the state of every station and a reject signal for the PLC.

Nodes (namespace `opcua.namespace_uri`, string node ids, docs/outputs.md has the full list):

    <line>/<station>/LastResult/{ResultId, PartId, CameraId, Verdict, Score, Threshold, DefectClasses,
                                 CaptureTime, ResultJson}
    <line>/<station>/Counts/{OK, NG, REVIEW, Total}
    <line>/<station>/Reject/{Active, Count, ResultId, PartId, Time, StaleCount}
    <line>/<station>/Cameras/<camera>/{Online, LastResultTime, LastResultId, LastFrameTime,
                                       FramesCaptured, Reconnects, Underruns, StaleEvents}
    ResultReadyEventType events, emitted by the station object, one per result, in record order

Ids are percent-encoded where they contain `/` (escape_id), so every id stays one path level.

A durable tail of the record store (sinks/result_tail.py). The station state (counters, last result,
reject) is persisted in the output's state file in the same transaction as its cursor, after the node
values are written: a restart shows the same values at once (a client connecting late or after a
restart reads the current state), counters never count a result twice, and results recorded while the
server was down are applied, with their events, when it comes back.

The reject output. For each NG result, within `poll_ms` (20 ms) plus a write of the record commit:
`Reject/ResultId`, `Reject/PartId` and `Reject/Time` are written first, then `Reject/Count` is
incremented, then `Reject/Active` is set true. A PLC that must act on every NG part subscribes to
`Count` (one increment per NG part; consecutive NGs never merge) and reads the ids; `Active` is a
convenience pulse that clears itself `reject_pulse_ms` after the last NG (no acknowledgement needed;
clients cannot write). An NG captured more than `reject_max_age_ms` before it reached the server (a
replay after a restart) is counted in `StaleCount` only, so a PLC never rejects a part long gone.

Camera health (`LastFrameTime` and the gateway's device counters) is read from the record store about
once a second (inspector/camera_health.py saves it there).

Security (`ClientGate`): the server offers `config.policies` only. With a certificate, a client must
present a certificate found in `trusted_clients_dir` or issued by a CA there; a None channel is served
only when "None" is one of the policies. Clients identify by their application certificate (anonymous
user token); each refusal is logged and counted (`edgeinspect_output_errors_total{reason="client_refused"}`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from edge_inspect.bus.contracts import VERDICTS
from edge_inspect.inspector.config import OpcUaConfig
from edge_inspect.logs import log_event
from edge_inspect.sinks.record_store import CameraReading, RecordStore
from edge_inspect.sinks.result_tail import CameraWatch, CursorStore, ResultTail, TailItem, escape_id

if TYPE_CHECKING:
    from asyncua import Node, Server, ua
    from asyncua.crypto.permission_rules import User
    from asyncua.crypto.truststore import TrustStore
    from asyncua.server.event_generator import EventGenerator

    from edge_inspect.sinks.metrics import InspectorMetrics

log = logging.getLogger(__name__)
# The gateway's device counters (bus.contracts.CameraHealth field → variable), read about once a second.
HEALTH_VARIABLES = {
    "captured": "FramesCaptured",
    "reconnects": "Reconnects",
    "underruns": "Underruns",
    "stale_events": "StaleEvents",
}
HEALTH_INTERVAL_S = 1.0

OUTPUT = "opcua"
_STATE_SCHEMA = "CREATE TABLE IF NOT EXISTS opcua_stations (station TEXT PRIMARY KEY, state TEXT NOT NULL)"
EVENT_FIELDS: tuple[tuple[str, str], ...] = (
    ("ResultId", "String"),
    ("PartId", "String"),
    ("CameraId", "String"),
    ("Station", "String"),
    ("Verdict", "String"),
    ("Score", "Double"),
    ("DefectClasses", "String"),  # comma-separated, sorted
    ("Sequence", "Int64"),  # the record store's rowid: increasing, for ordering and gaps
)


def node_path(*levels: str) -> str:
    return "/".join(escape_id(level, "/") for level in levels)


def to_datetime(t_ns: int) -> datetime:
    return datetime.fromtimestamp(t_ns / 1e9, tz=timezone.utc)


def defect_classes(result: dict[str, Any]) -> list[str]:
    return sorted({defect["cls"] for defect in result.get("defects", [])})


@dataclass
class StationState:
    """What the server shows of one station; persisted as JSON with the cursor."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(VERDICTS, 0))
    last_result: dict[str, Any] | None = None
    rejects: int = 0
    stale_rejects: int = 0
    reject_result_id: str = ""
    reject_part_id: str = ""
    reject_t_ns: int = 0

    def apply(self, result: dict[str, Any], now_ns: int, max_age_ns: int) -> bool:
        """Count one result; True when it is a reject the PLC must act on (NG and fresh)."""
        self.counts[result["verdict"]] = self.counts.get(result["verdict"], 0) + 1
        self.last_result = result
        if result["verdict"] != "NG":
            return False
        if now_ns - int(result["t_capture_ns"]) > max_age_ns:
            self.stale_rejects += 1
            return False
        self.rejects += 1
        self.reject_result_id = str(result["result_id"])
        self.reject_part_id = result.get("part_id") or ""
        self.reject_t_ns = now_ns
        return True


class StateStore:
    """The station states in the output's state file, saved in one transaction with the cursor."""

    def __init__(self, cursors: CursorStore) -> None:
        self.cursors = cursors
        cursors.conn.execute(_STATE_SCHEMA)

    def load(self) -> dict[str, StationState]:
        rows = self.cursors.conn.execute("SELECT station, state FROM opcua_stations").fetchall()
        return {station: StationState(**json.loads(state)) for station, state in rows}

    def save(self, states: dict[str, StationState], tail: ResultTail, item: TailItem) -> None:
        conn = self.cursors.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(
                "INSERT OR REPLACE INTO opcua_stations (station, state) VALUES (?, ?)",
                [(station, json.dumps(asdict(state))) for station, state in states.items()],
            )
            tail.commit(item)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


class StationNodes:
    """The nodes of one station: created once, then written from its `StationState` and results."""

    def __init__(self, server: Server, idx: int, line: str, station: str) -> None:
        self.server, self.idx, self.station = server, idx, station
        self.at = (line, station)
        self.vars: dict[str, tuple[Node, Any]] = {}
        self.cameras: set[str] = set()
        self.object: Node | None = None
        self.events: EventGenerator | None = None

    async def create(self, parent: Node, event_type: Node) -> None:
        from asyncua import ua

        nodeid, name = ua.NodeId(node_path(*self.at), self.idx), ua.QualifiedName(self.station, self.idx)
        self.object = await parent.add_object(nodeid, name)
        for folder, variables in station_variables().items():
            await self._add_folder(self.object, self.at, folder, variables)
        self.cameras_folder = await self._add_folder(self.object, self.at, "Cameras", ())
        self.events = await self.server.get_event_generator(event_type, self.object)

    async def _add_folder(
        self, parent: Node, at: tuple[str, ...], name: str, variables: tuple[tuple[str, Any, Any], ...]
    ) -> Node:
        from asyncua import ua

        nodeid = ua.NodeId(node_path(*at, name), self.idx)
        folder = await parent.add_folder(nodeid, ua.QualifiedName(name, self.idx))
        prefix = "/".join((*at[2:], name))  # the key below the station: "Reject", "Cameras/<camera>"
        for var, value, vtype in variables:
            var_id = ua.NodeId(node_path(*at, name, var), self.idx)
            node = await folder.add_variable(
                var_id, ua.QualifiedName(var, self.idx), ua.Variant(value, vtype)
            )
            self.vars[f"{prefix}/{var}"] = (node, vtype)
        return folder

    async def add_camera(self, camera: str) -> None:
        from asyncua import ua

        if camera in self.cameras:
            return
        self.cameras.add(camera)
        variables = (
            ("Online", False, ua.VariantType.Boolean),
            ("LastResultTime", to_datetime(0), ua.VariantType.DateTime),
            ("LastResultId", "", ua.VariantType.String),
            ("LastFrameTime", to_datetime(0), ua.VariantType.DateTime),
            *((name, 0, ua.VariantType.Int64) for name in HEALTH_VARIABLES.values()),
        )
        await self._add_folder(self.cameras_folder, (*self.at, "Cameras"), camera, variables)

    async def write(self, name: str, value: Any) -> None:
        from asyncua import ua

        node, vtype = self.vars[name]
        await node.write_value(ua.Variant(value, vtype))

    async def write_state(self, state: StationState) -> None:
        """Every value from the state (at start, and after each result)."""
        for verdict in VERDICTS:
            await self.write(f"Counts/{verdict}", state.counts.get(verdict, 0))
        await self.write("Counts/Total", sum(state.counts.values()))
        if state.last_result is not None:
            await self.write_last(state.last_result)
        await self.write("Reject/StaleCount", state.stale_rejects)
        # The ids before the count, so that a PLC woken by the count reads this reject's ids.
        await self.write("Reject/ResultId", state.reject_result_id)
        await self.write("Reject/PartId", state.reject_part_id)
        await self.write("Reject/Time", to_datetime(state.reject_t_ns))
        await self.write("Reject/Count", state.rejects)

    async def write_last(self, result: dict[str, Any]) -> None:
        for name, value in (
            ("ResultId", result["result_id"]),
            ("PartId", result.get("part_id") or ""),
            ("CameraId", result["camera_id"]),
            ("Verdict", result["verdict"]),
            ("Score", float(result["score"])),
            ("Threshold", float(result["threshold"])),
            ("DefectClasses", defect_classes(result)),
            ("CaptureTime", to_datetime(int(result["t_capture_ns"]))),
            ("ResultJson", json.dumps(result, separators=(",", ":"))),
        ):
            await self.write(f"LastResult/{name}", value)

    async def result_ready(self, item: TailItem) -> None:
        assert self.events is not None
        result, event = item.result, self.events.event
        event.ResultId, event.PartId = item.result_id, result.get("part_id") or ""
        event.CameraId, event.Station = result["camera_id"], result["station"]
        event.Verdict, event.Score = result["verdict"], float(result["score"])
        event.DefectClasses, event.Sequence = ",".join(defect_classes(result)), item.rowid
        event.Severity = 700 if result["verdict"] == "NG" else 100
        await self.events.trigger(message=f"{result['verdict']} {item.result_id}")


def station_variables() -> dict[str, tuple[tuple[str, Any, Any], ...]]:
    """The folders of a station and their variables: (name, initial value, variant type)."""
    from asyncua import ua

    vt = ua.VariantType
    return {
        "LastResult": (
            ("ResultId", "", vt.String),
            ("PartId", "", vt.String),
            ("CameraId", "", vt.String),
            ("Verdict", "", vt.String),
            ("Score", 0.0, vt.Double),
            ("Threshold", 0.0, vt.Double),
            ("DefectClasses", [], vt.String),
            ("CaptureTime", to_datetime(0), vt.DateTime),
            ("ResultJson", "", vt.String),
        ),
        "Counts": tuple((name, 0, vt.UInt64) for name in (*VERDICTS, "Total")),
        "Reject": (
            ("Active", False, vt.Boolean),
            ("Count", 0, vt.UInt64),
            ("ResultId", "", vt.String),
            ("PartId", "", vt.String),
            ("Time", to_datetime(0), vt.DateTime),
            ("StaleCount", 0, vt.UInt64),
        ),
    }


def _is_pem(data: bytes) -> bool:
    return data.lstrip().startswith(b"-----BEGIN")


def server_identity(
    certificate_path: Path, key_path: Path
) -> tuple[x509.Certificate, rsa.RSAPrivateKey, str]:
    """The server's certificate, its private key and its application URI (the certificate's URI
    subjectAltName, which OPC UA clients compare with the server's), checked to belong together. PEM or
    DER, told apart by content: asyncua would go by the file name's extension."""
    data, key_data = certificate_path.read_bytes(), key_path.read_bytes()
    certificate = (
        x509.load_pem_x509_certificate(data) if _is_pem(data) else x509.load_der_x509_certificate(data)
    )
    if _is_pem(key_data):
        key = serialization.load_pem_private_key(key_data, password=None)
    else:
        key = serialization.load_der_private_key(key_data, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(
            f"{key_path} is not an RSA key: OPC UA's security policies sign and encrypt with RSA"
        )
    if certificate.public_key() != key.public_key():
        raise ValueError(f"{key_path} is not the private key of {certificate_path}: give the matching pair")
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    if not uris:
        raise ValueError(
            f"{certificate_path} has no URI subjectAltName: OPC UA clients check the server's application "
            "URI against it; issue the certificate with one, e.g. URI:urn:edgeinspect:<host>"
        )
    return certificate, key, uris[0]


def _subject(certificate: x509.Certificate | None) -> str:
    return certificate.subject.rfc4514_string() if certificate is not None else ""


class ClientGate:
    """Who may open a session. asyncua checks the certificate a client names in CreateSession
    (`validate`: validity, application URI, key usage, trust), but a client may name none there while
    its secure channel uses an untrusted one, and may open a channel with SecurityPolicy None although
    the server offers no such endpoint (asyncua accepts it and only the client's own endpoint check
    stops it). So every session is checked again at activation, asyncua's user-manager hook
    (`get_user`), against the secure channel's own certificate: none there means a None channel."""

    def __init__(
        self, allow_none: bool, trust_store: TrustStore | None, on_refused: Callable[[str, str], None]
    ) -> None:
        from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions

        self.allow_none, self.trust_store, self.on_refused = allow_none, trust_store, on_refused
        options = CertificateValidatorOptions.TRUSTED_VALIDATION | CertificateValidatorOptions.PEER_CLIENT
        self.validator = CertificateValidator(options, trust_store)

    async def validate(self, certificate: x509.Certificate, application: ua.ApplicationDescription) -> None:
        from asyncua import ua
        from asyncua.common.utils import ServiceError

        if self.trust_store is None:
            return  # no certificate of the server's, so no secure channel: nothing a certificate could open
        try:
            await self.validator.validate(certificate, application)
        except ServiceError as exc:
            self.on_refused(ua.StatusCode(exc.code).name, _subject(certificate))
            raise

    def get_user(
        self, iserver: Any, username: str | None = None, password: str | None = None, certificate: Any = None
    ) -> User | None:
        from asyncua.crypto.permission_rules import User, UserRole

        if not certificate:  # a None channel (asyncua passes b"")
            if self.allow_none:
                return User(role=UserRole.User)
            self.on_refused("BadSecurityPolicyRejected", "")
            return None
        peer = x509.load_der_x509_certificate(certificate)
        if self.trust_store is not None and self.trust_store.validate(peer):
            return User(role=UserRole.User)
        self.on_refused("BadCertificateUntrusted", _subject(peer))
        return None


async def client_gate(config: OpcUaConfig, on_refused: Callable[[str, str], None]) -> ClientGate:
    """The `ClientGate` of `config`: its trusted client certificates loaded."""
    from asyncua.crypto.truststore import TrustStore

    trust_store = None
    if config.trusted_clients_dir is not None:
        trust_store = TrustStore([config.trusted_clients_dir], [])
        await trust_store.load()
    return ClientGate("None" in config.policies, trust_store, on_refused)


async def make_server(
    config: OpcUaConfig, on_refused: Callable[[str, str], None]
) -> tuple[Server, int, Node, Node]:
    """The server (not yet listening), its namespace index, the line object and the event type. It
    offers `config.policies` only, with the server's certificate, behind a `ClientGate`."""
    from asyncua import Server, ua

    gate = await client_gate(config, on_refused)
    server = Server(user_manager=gate)
    await server.init()
    server.set_endpoint(config.endpoint or "")
    server.set_server_name("EdgeInspect")
    server.set_security_policy(
        [
            ua.SecurityPolicyType.NoSecurity if name == "None" else ua.SecurityPolicyType[name]
            for name in config.policies
        ]
    )
    # Clients are told apart by their application certificate; no user database stands behind user names.
    server.set_identity_tokens([ua.AnonymousIdentityToken])
    server.set_certificate_validator(gate.validate)
    if config.certificate is not None and config.private_key is not None:
        certificate, key, uri = server_identity(config.certificate, config.private_key)
        await server.load_certificate(certificate.public_bytes(serialization.Encoding.DER), format="der")
        der_key = key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        await server.load_private_key(der_key, format="der")
        await server.set_application_uri(uri)
    idx = await server.register_namespace(config.namespace_uri)
    fields = [(name, getattr(ua.VariantType, vtype)) for name, vtype in EVENT_FIELDS]
    event_type = await server.create_custom_event_type(
        idx, "ResultReadyEventType", ua.ObjectIds.BaseEventType, fields
    )
    line = config.line
    root = await server.nodes.objects.add_object(ua.NodeId(node_path(line), idx), ua.QualifiedName(line, idx))
    return server, idx, root, event_type


class OpcUaOutput:
    """An asyncua server in a thread of its own, following the record store; `start()`, then `stop()`.
    `start` raises when the server cannot serve (the port taken, a bad endpoint)."""

    def __init__(
        self,
        config: OpcUaConfig,
        db_path: Path,
        state_path: Path,
        metrics: InspectorMetrics | None = None,
    ) -> None:
        if config.endpoint is None:
            raise ValueError("opcua.endpoint is not set: the OPC UA output is off")
        self.config = config
        self.db_path, self.state_path = Path(db_path), Path(state_path)
        self.metrics = metrics
        self.states: dict[str, StationState] = {}
        self.stations: dict[str, StationNodes] = {}
        self.cameras = CameraWatch(config.camera_timeout_s)
        self._reject_until: dict[str, float] = {}  # station → monotonic time Reject/Active clears
        self._health_written: dict[str, CameraReading] = {}
        self._next_health_s = 0.0
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edge-inspect-opcua", daemon=True)
        self.failure: BaseException | None = None

    def start(self, timeout_s: float = 60.0) -> None:
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise RuntimeError(f"the OPC UA server did not start within {timeout_s} s")
        if self.failure is not None:
            raise RuntimeError(f"the OPC UA server did not start: {self.failure!r}") from self.failure

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self.failure = exc
            log_event(log, logging.ERROR, "opcua_output_crashed", error=repr(exc))
        finally:
            self._ready.set()
            self._set_connected(False)

    async def _main(self) -> None:
        tail = ResultTail(self.db_path, self.state_path, OUTPUT)
        records = RecordStore(self.db_path)
        try:
            store = StateStore(tail.cursors)
            self.states = store.load()
            self.server, self.idx, self.root, self.event_type = await make_server(self.config, self._refused)
            for station, state in self.states.items():
                await (await self._station(station)).write_state(state)
            await self._load_cameras(tail)
            async with self.server:
                self._ready.set()
                self._set_connected(True)
                log_event(
                    log,
                    logging.INFO,
                    "opcua_serving",
                    endpoint=self.config.endpoint,
                    security=self.config.policies,
                )
                while not self._stop.is_set():
                    await self._step(tail, store)
                    await self._camera_health(records)
                    await asyncio.sleep(self.config.poll_ms / 1000.0)
                await self._step(tail, store)  # what was recorded while stopping
        finally:
            tail.close()
            records.close()

    async def _station(self, station: str) -> StationNodes:
        nodes = self.stations.get(station)
        if nodes is None:
            nodes = StationNodes(self.server, self.idx, self.config.line, station)
            await nodes.create(self.root, self.event_type)
            self.stations[station] = nodes
            self.states.setdefault(station, StationState())
        return nodes

    async def _step(self, tail: ResultTail, store: StateStore) -> None:
        items = tail.next_batch(500)
        for item in items:
            await self._apply(item)
        if items:
            # After the node values are written: a crash before this repeats those results, which the
            # persisted counters (saved with this cursor) then count once.
            store.save(self.states, tail, items[-1])
            if self.metrics is not None:
                self.metrics.output_delivered(OUTPUT, len(items))
        await self._expire(time.time_ns())
        if self.metrics is not None:
            self.metrics.set_output_lag(OUTPUT, tail.lag())

    async def _apply(self, item: TailItem) -> None:
        result, now_ns = item.result, time.time_ns()
        nodes = await self._station(result["station"])
        state = self.states[result["station"]]
        reject = state.apply(result, now_ns, int(self.config.reject_max_age_ms * 1e6))
        await nodes.write(f"Counts/{result['verdict']}", state.counts[result["verdict"]])
        await nodes.write("Counts/Total", sum(state.counts.values()))
        await nodes.write_last(result)
        if reject:
            await nodes.write("Reject/ResultId", state.reject_result_id)
            await nodes.write("Reject/PartId", state.reject_part_id)
            await nodes.write("Reject/Time", to_datetime(state.reject_t_ns))
            await nodes.write("Reject/Count", state.rejects)
            await nodes.write("Reject/Active", True)
            self._reject_until[result["station"]] = time.monotonic() + self.config.reject_pulse_ms / 1000
        elif result["verdict"] == "NG":
            await nodes.write("Reject/StaleCount", state.stale_rejects)
        await self._camera(nodes, result, now_ns)
        await nodes.result_ready(item)

    async def _camera(self, nodes: StationNodes, result: dict[str, Any], now_ns: int) -> None:
        camera = result["camera_id"]
        await nodes.add_camera(camera)
        await nodes.write(f"Cameras/{camera}/LastResultTime", to_datetime(int(result["t_capture_ns"])))
        await nodes.write(f"Cameras/{camera}/LastResultId", result["result_id"])
        if self.cameras.seen(nodes.station, camera, int(result["t_capture_ns"]), now_ns):
            await nodes.write(f"Cameras/{camera}/Online", self.cameras.online[(nodes.station, camera)])

    async def _camera_health(self, records: RecordStore) -> None:
        if time.monotonic() < self._next_health_s:
            return
        self._next_health_s = time.monotonic() + HEALTH_INTERVAL_S
        for reading in records.camera_health():
            if self._health_written.get(reading.camera_id) == reading:
                continue
            nodes = await self._station(reading.station)
            await nodes.add_camera(reading.camera_id)
            at = f"Cameras/{reading.camera_id}"
            await nodes.write(f"{at}/LastFrameTime", to_datetime(reading.last_frame_ns))
            for field_name, variable in HEALTH_VARIABLES.items():
                await nodes.write(f"{at}/{variable}", getattr(reading.health, field_name))
            self._health_written[reading.camera_id] = reading

    async def _load_cameras(self, tail: ResultTail) -> None:
        now_ns = time.time_ns()
        for station, camera, last_ns in tail.cameras():
            nodes = await self._station(station)
            await nodes.add_camera(camera)
            await nodes.write(f"Cameras/{camera}/LastResultTime", to_datetime(last_ns))
            self.cameras.seen(station, camera, last_ns, now_ns)
            await nodes.write(f"Cameras/{camera}/Online", self.cameras.online[(station, camera)])

    async def _expire(self, now_ns: int) -> None:
        now = time.monotonic()
        for station, until in list(self._reject_until.items()):
            if now >= until:
                del self._reject_until[station]
                await self.stations[station].write("Reject/Active", False)
        for station, camera in self.cameras.expire(now_ns):
            online = self.cameras.online[(station, camera)]
            await self.stations[station].write(f"Cameras/{camera}/Online", online)

    def _set_connected(self, serving: bool) -> None:
        if self.metrics is not None:
            self.metrics.set_output_connected(OUTPUT, serving)

    def _refused(self, status: str, client: str) -> None:
        log_event(log, logging.WARNING, "opcua_client_refused", status=status, client=client)
        if self.metrics is not None:
            self.metrics.output_error(OUTPUT, "client_refused")
