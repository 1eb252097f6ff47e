"""The inspector's one configuration object, filled by a TOML file and by `edge-inspect serve` flags.

Each section is a typed model that refuses unknown keys, so a misspelt key is an error, not a silently
ignored default. Flags override the file key by key (`overrides`, dotted paths). A file's errors name the
file, the key and, where it can be found, the line:

    line.toml:12: batching.max_batch: Input should be greater than or equal to 1

The sections follow the data's path: model → bus → batching → inference → rules → records → metrics → mes.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from edge_inspect.bus.security import is_loopback
from edge_inspect.camera_adapters.config import CameraDefaults, CameraEntry, LineCameras, merge_defaults
from edge_inspect.inspector.rules import QualityRules
from edge_inspect.inspector.toml_errors import describe_errors

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


class ConfigError(ValueError):
    """A configuration that cannot serve; the message names the file, line and key where known."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _existing_file(path: Path | None) -> Path | None:
    if path is not None and not path.is_file():
        raise ValueError(f"{path} is not a file (missing, or a directory); check the path")
    return path


# A file that must exist when the inspector starts; the error names the key (mes.ca_file: ...).
ExistingFile = Annotated[Path | None, AfterValidator(_existing_file)]


def _existing_dir(path: Path | None) -> Path | None:
    if path is not None and not path.is_dir():
        raise ValueError(f"{path} is not a directory (missing, or a file); check the path")
    return path


ExistingDir = Annotated[Path | None, AfterValidator(_existing_dir)]


class ModelSource(Section):
    """`package` serves one fixed package; `registry` (a directory or `s3://bucket/prefix`) + `name`
    serve the promoted version and follow promotions (checked every `poll_s`)."""

    package: Path | None = None
    # Kept as a string: Path() would fold the "//" of an s3:// URL.
    registry: str | None = None
    name: str | None = None
    poll_s: float = Field(2.0, gt=0)
    # An ed25519 public key (NAME.pub.pem from `edge-inspect models signing-key`): serve only packages
    # signed with its private key, refusing unsigned or altered ones.
    trust_key: ExistingFile = None

    @model_validator(mode="after")
    def _one_source(self) -> ModelSource:
        if (self.package is None) == (self.registry is None):
            raise ValueError(
                "give either model.package (--model) or model.registry (--registry), exactly one"
            )
        if self.registry is not None and not self.name:
            raise ValueError("a registry needs model.name (--model-name): which of its models to serve")
        return self


class BusConfig(Section):
    """Where cameras connect and results are published. Binding anything but loopback requires CURVE:
    `curve_secret_key` (the inspector's NAME.key_secret) and `allowed_keys_dir` (the public NAME.key of
    every camera and results subscriber it accepts), both made by `edge-inspect keys`."""

    bind: str = "tcp://127.0.0.1:5555"
    # PUB endpoint for results; "" or none disables it.
    results: str | None = "tcp://127.0.0.1:5556"
    # Larger frame messages are refused by ZeroMQ before they are buffered.
    max_message_mb: float = Field(64.0, gt=0, le=4096)
    # Distinct camera ids the inspector keeps state for (queues, sequence numbers, metric series); frames
    # from further ids are refused and counted (`too_many_cameras`).
    max_cameras: int = Field(64, ge=1, le=10_000)
    curve_secret_key: ExistingFile = None
    allowed_keys_dir: ExistingDir = None

    @model_validator(mode="after")
    def _authenticated_beyond_loopback(self) -> BusConfig:
        if (self.curve_secret_key is None) != (self.allowed_keys_dir is None):
            raise ValueError("bus.curve_secret_key and bus.allowed_keys_dir go together (edge-inspect keys)")
        exposed = [
            endpoint for endpoint in (self.bind, self.results) if endpoint and not is_loopback(endpoint)
        ]
        if exposed and self.curve_secret_key is None:
            raise ValueError(
                f"{', '.join(exposed)} is reachable from the network, so the bus must be authenticated: set "
                "bus.curve_secret_key and bus.allowed_keys_dir (make keys with `edge-inspect keys`), or bind "
                "tcp://127.0.0.1"
            )
        return self

    @property
    def authenticated(self) -> bool:
        return self.curve_secret_key is not None


class BatchingConfig(Section):
    """Dynamic batching, as Triton's dynamic batcher does it (inspector/batching.py): when inference is
    idle, whatever is queued goes at once, so at a low rate a part never waits for company; a batch grows
    only from frames that queued while inference was busy (running a batch, or holding the next one
    already preprocessed), up to `max_batch`. `max_wait_ms` caps how long a part, counted from when it
    was queued, waits for company while inference is busy (0: never wait); it is no delay when idle.
    `queue_depth` is the per-camera queue (a full lossless queue back-pressures the camera).
    `max_queued_mb` bounds the frames waiting in all queues together, in payload bytes, so memory stays
    bounded whatever the frame size and camera count: a lossless frame that does not fit back-pressures
    its camera; a latest frame drops the oldest waiting latest frame (`dropped{reason="memory_budget"}`).
    """

    max_batch: int = Field(8, ge=1, le=256)
    max_wait_ms: float = Field(10.0, ge=0, le=60_000)
    queue_depth: int = Field(32, ge=1, le=100_000)
    # The default is CameraQueues' (inspector/batching.py DEFAULT_MAX_QUEUED_BYTES): 512 MiB.
    max_queued_mb: float = Field(512.0, gt=0, le=1_048_576)

    @property
    def max_queued_bytes(self) -> int:
        return int(self.max_queued_mb * 1024 * 1024)


class InferenceConfig(Section):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Where frames are decoded and preprocessed (inspector/device/frame_path.py); the host path always
    # runs ONNX Runtime.
    frame_path: Literal["auto", "host", "device"] = "auto"
    runtime: Literal["ort", "torch"] = "ort"
    cuda_graph: bool = False
    threads: int = Field(0, ge=0, le=1024)


class RecordsConfig(Section):
    workdir: Path = Path("var/inspector")
    # Share of OK parts whose images are archived too, so retraining gets fresh good images.
    archive_ok_rate: float = Field(0.0, ge=0, le=1)


class MetricsConfig(Section):
    """The HTTP endpoint with `/metrics`, `/healthz` (every stage thread running, none stuck on one item
    for `stall_s`) and `/readyz` (model loaded, bus bound, store writable, `min_free_disk_mb` free)."""

    # None disables the endpoint; 0 picks a free port.
    port: int | None = Field(9108, ge=0, le=65535)
    address: str = "127.0.0.1"
    stall_s: float = Field(30.0, gt=0)
    min_free_disk_mb: float = Field(512.0, ge=0)


class RetentionConfig(Section):
    """How long the image archive and the records are kept (unset: for ever); checked every
    `interval_s`. Records are deleted only once delivered to the MES and not labelled for retraining."""

    images_max_age_days: float | None = Field(None, gt=0)
    images_max_gb: float | None = Field(None, gt=0)
    records_max_age_days: float | None = Field(None, gt=0)
    interval_s: float = Field(600.0, gt=0)

    @property
    def enabled(self) -> bool:
        return any(
            v is not None for v in (self.images_max_age_days, self.images_max_gb, self.records_max_age_days)
        )


class MesConfig(Section):
    """The MES webhook (sinks/mes_webhook.py). Only `url` is needed; the rest has working defaults.

    Every POST is tried at most `max_attempts` times, waiting `initial_backoff_s` doubling up to
    `max_backoff_s` in between; then the result goes to the outbox's dead letters (`edge-inspect records
    --requeue-dead` sends them again). TLS is verified against the system's and certifi's trust
    stores, or only against `ca_file`; `client_cert` (+ `client_key` unless the key is in the same PEM
    file) for mutual TLS. The bearer token is never written here: `token_file` or `token_env` (the name
    of an environment variable) holds it. `hmac_key_file` adds an HMAC-SHA256 signature header (see
    mes_webhook.py). Redirects are never followed: a 3xx is a dead letter, not a delivery.
    """

    url: str | None = None
    connect_timeout_s: float = Field(5.0, gt=0, le=600)
    read_timeout_s: float = Field(10.0, gt=0, le=600)
    initial_backoff_s: float = Field(1.0, gt=0)
    max_backoff_s: float = Field(300.0, gt=0)
    max_attempts: int = Field(20, ge=1, le=1_000_000)
    # Deliveries per pass: the outbox is read and the delivered rows are marked once per pass.
    batch: int = Field(32, ge=1, le=10_000)
    ca_file: ExistingFile = None
    client_cert: ExistingFile = None
    client_key: ExistingFile = None
    token_file: ExistingFile = None
    token_env: str | None = Field(None, min_length=1)
    hmac_key_file: ExistingFile = None

    @field_validator("url")
    @classmethod
    def _absolute_http_url(cls, url: str | None) -> str | None:
        if url is not None:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(f"{url!r} must be an absolute http:// or https:// URL")
        return url

    @model_validator(mode="before")
    @classmethod
    def _initial_backoff_yields(cls, data: Any) -> Any:
        # The default initial back-off yields to a shorter max_backoff_s; an explicit one does not.
        if isinstance(data, Mapping) and "initial_backoff_s" not in data and "max_backoff_s" in data:
            try:
                shorter = float(data["max_backoff_s"]) < cls.model_fields["initial_backoff_s"].default
            except (TypeError, ValueError):
                return data  # the field's own validation reports it
            if shorter:
                return {**data, "initial_backoff_s": data["max_backoff_s"]}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> MesConfig:
        if self.initial_backoff_s > self.max_backoff_s:
            raise ValueError(
                f"need mes.initial_backoff_s <= mes.max_backoff_s, got {self.initial_backoff_s} and "
                f"{self.max_backoff_s}"
            )
        if self.client_key is not None and self.client_cert is None:
            raise ValueError("mes.client_key needs mes.client_cert: the certificate that key belongs to")
        if self.token_file is not None and self.token_env is not None:
            raise ValueError("give the MES bearer token one way: mes.token_file or mes.token_env, not both")
        if self.token_env is not None and not os.environ.get(self.token_env):
            raise ValueError(
                f"mes.token_env names the environment variable {self.token_env!r}, which is not set or "
                "empty; export it before starting the inspector"
            )
        return self


class ShiftTimes(Section):
    """One shift: from `start` to `end`, times of day in the calendar's time zone. A shift whose end is
    not after its start runs past midnight and belongs to the date it starts on."""

    start: dt.time
    end: dt.time

    @model_validator(mode="after")
    def _not_empty(self) -> ShiftTimes:
        if self.start == self.end:
            raise ValueError("a shift needs different start and end times")
        return self


class ShiftsConfig(Section):
    """The shift calendar for shift reports (sinks/shift_report.py, `edge-inspect report`): named shifts
    in `timezone` (an IANA name, e.g. "Europe/Berlin": daylight saving is followed), `line` naming the
    line in reports, and `report_url`, where `edge-inspect report --push` POSTs a report (with [mes]'s
    TLS, token and signature settings)."""

    timezone: str = "UTC"
    line: str = Field("line-1", min_length=1, max_length=128)
    calendar: dict[Annotated[str, Field(min_length=1, max_length=64)], ShiftTimes] = {}
    report_url: str | None = None

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, name: str) -> str:
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"{name!r} is not a time zone this machine knows; write e.g. Europe/Berlin"
            ) from None
        return name

    @field_validator("report_url")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        return MesConfig._absolute_http_url(url)


class MqttConfig(Section):
    """The MQTT output (sinks/mqtt_output.py, topics in docs/outputs.md): results, alarms and statuses
    from the record store to a broker, QoS 1, at least once. `host` unset: off. `line` is the topic's
    line level. The password is never written here: `password_file` holds it. `ca_file` turns TLS on
    (`client_cert` + `client_key` for mutual TLS; the broker's certificate must name `host`), and a
    password is sent to a broker beyond loopback only over TLS. A camera is reported offline after
    `camera_timeout_s` without a result."""

    host: str | None = None
    port: int = Field(1883, ge=1, le=65535)
    line: str = Field("line-1", min_length=1, max_length=128)
    topic_prefix: str = Field("edgeinspect", min_length=1, max_length=64)
    # The broker keeps this client's session across reconnects; unset: edgeinspect-<line>.
    client_id: str | None = Field(None, min_length=1, max_length=128)
    keepalive_s: int = Field(15, ge=1, le=3600)
    username: str | None = None
    password_file: ExistingFile = None
    ca_file: ExistingFile = None
    client_cert: ExistingFile = None
    client_key: ExistingFile = None
    camera_timeout_s: float = Field(30.0, gt=0)
    # Results published and not yet acknowledged at most (each is up to three messages).
    max_in_flight: int = Field(100, ge=1, le=10_000)
    poll_ms: float = Field(50.0, gt=0, le=60_000)

    @model_validator(mode="after")
    def _tls_consistent(self) -> MqttConfig:
        if self.client_key is not None and self.client_cert is None:
            raise ValueError("mqtt.client_key needs mqtt.client_cert: the certificate that key belongs to")
        # An IPv6 address goes in brackets to be read as a host.
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        if self.password_file is not None and not self.tls and host and not is_loopback(f"tcp://{host}"):
            raise ValueError(
                f"mqtt.password_file is set and {self.host} is reachable from the network, so the password "
                "would travel in clear: set mqtt.ca_file (the CA of the broker's TLS certificate) and the "
                "broker's TLS port, or use a broker on 127.0.0.1"
            )
        return self

    @property
    def enabled(self) -> bool:
        return self.host is not None

    @property
    def tls(self) -> bool:
        return self.ca_file is not None or self.client_cert is not None


class OpcUaConfig(Section):
    """The OPC UA server (sinks/opcua_output.py, nodes in docs/outputs.md): per station the last result,
    counters, camera status, a ResultReady event and the reject output. `endpoint` unset: off. Clients
    only read. `Reject` stays true `reject_pulse_ms` after the last NG; an NG captured more than
    `reject_max_age_ms` before it reaches the server (replayed after a restart) is counted but does not
    touch the reject output, so a PLC never rejects a part that has long passed.

    Security (docs/security.md): with `certificate` + `private_key` (the server's RSA application
    certificate, PEM or DER) the server offers `security` (default Basic256Sha256_SignAndEncrypt) and
    accepts only clients whose certificate, or its issuer, is in `trusted_clients_dir`. Without them it
    is unencrypted and open to anyone (SecurityPolicy None), which a server beyond loopback may be only
    when `security` lists "None" explicitly."""

    endpoint: str | None = None
    line: str = Field("line-1", min_length=1, max_length=128)
    namespace_uri: str = "urn:edgeinspect"
    reject_pulse_ms: float = Field(500.0, gt=0, le=600_000)
    reject_max_age_ms: float = Field(5000.0, gt=0)
    camera_timeout_s: float = Field(30.0, gt=0)
    poll_ms: float = Field(20.0, gt=0, le=60_000)
    certificate: ExistingFile = None
    private_key: ExistingFile = None
    # Client certificates (PLCs, SCADA) or the CAs that issued them, one *.der or *.pem file each.
    trusted_clients_dir: ExistingDir = None
    # asyncua's policy_mode names; the SHA-1 policies (Basic128Rsa15, Basic256) are deprecated and left out.
    # Unset: Basic256Sha256_SignAndEncrypt with a certificate, "None" without (loopback only).
    security: (
        tuple[
            Literal[
                "None",
                "Basic256Sha256_Sign",
                "Basic256Sha256_SignAndEncrypt",
                "Aes128Sha256RsaOaep_Sign",
                "Aes128Sha256RsaOaep_SignAndEncrypt",
                "Aes256Sha256RsaPss_Sign",
                "Aes256Sha256RsaPss_SignAndEncrypt",
            ],
            ...,
        ]
        | None
    ) = Field(None, min_length=1)

    @field_validator("endpoint")
    @classmethod
    def _opc_tcp_url(cls, endpoint: str | None) -> str | None:
        if endpoint is not None and not endpoint.startswith("opc.tcp://"):
            raise ValueError(f"{endpoint!r} must be an opc.tcp://host:port/path URL")
        return endpoint

    @model_validator(mode="after")
    def _secured_beyond_loopback(self) -> OpcUaConfig:
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError(
                "opcua.certificate and opcua.private_key go together: the server's certificate and its key"
            )
        secure = [policy for policy in self.policies if policy != "None"]
        if secure and self.certificate is None:
            raise ValueError(
                f"opcua.security lists {', '.join(secure)}, which needs the server's own certificate: set "
                "opcua.certificate and opcua.private_key"
            )
        if self.certificate is not None and not secure:
            raise ValueError(
                'opcua.certificate is set but opcua.security offers only "None": add a policy such as '
                '"Basic256Sha256_SignAndEncrypt", or drop the certificate'
            )
        if self.certificate is not None and self.trusted_clients_dir is None:
            raise ValueError(
                "opcua.certificate needs opcua.trusted_clients_dir: the directory of the client certificates "
                "(or of the CAs that issued them) the server accepts; without it any client could read"
            )
        if self.trusted_clients_dir is not None:
            if self.certificate is None:
                raise ValueError("opcua.trusted_clients_dir needs opcua.certificate and opcua.private_key")
            if not any(
                path.suffix.lower() in (".der", ".pem") for path in self.trusted_clients_dir.iterdir()
            ):
                raise ValueError(
                    f"{self.trusted_clients_dir} holds no *.der or *.pem certificate, so no client could "
                    "connect: copy each client's certificate (or its CA's) into opcua.trusted_clients_dir"
                )
        if self.endpoint and self.security is None and not secure and not is_loopback(self.endpoint):
            raise ValueError(
                f"{self.endpoint} is reachable from the network, so the OPC UA server must be secured: set "
                "opcua.certificate, opcua.private_key and opcua.trusted_clients_dir (docs/security.md), or "
                'bind opc.tcp://127.0.0.1, or accept any client unencrypted with opcua.security = ["None"]'
            )
        return self

    @property
    def enabled(self) -> bool:
        return self.endpoint is not None

    @property
    def policies(self) -> tuple[str, ...]:
        """The security policies and modes the server offers (`security`, or its default)."""
        if self.security is not None:
            return self.security
        return ("Basic256Sha256_SignAndEncrypt",) if self.certificate is not None else ("None",)


class InspectorConfig(Section):
    model: ModelSource
    bus: BusConfig = BusConfig()
    batching: BatchingConfig = BatchingConfig()
    inference: InferenceConfig = InferenceConfig()
    rules: QualityRules = QualityRules()
    records: RecordsConfig = RecordsConfig()
    retention: RetentionConfig = RetentionConfig()
    metrics: MetricsConfig = MetricsConfig()
    mes: MesConfig = MesConfig()
    mqtt: MqttConfig = MqttConfig()
    opcua: OpcUaConfig = OpcUaConfig()
    shifts: ShiftsConfig = ShiftsConfig()
    # The line's cameras (camera_adapters/config.py): the gateways run them; the inspector reads each
    # one's silence limit.
    camera_defaults: CameraDefaults = CameraDefaults()
    cameras: list[CameraEntry] = []

    @model_validator(mode="after")
    def _consistent(self) -> InspectorConfig:
        inference = self.inference
        if inference.cuda_graph and inference.runtime != "torch":
            raise ValueError(
                "inference.cuda_graph replays the torch runtime's CUDA graphs; set inference.runtime = "
                '"torch" (--runtime torch) or drop it'
            )
        if inference.frame_path == "host" and (inference.runtime != "ort" or inference.cuda_graph):
            raise ValueError(
                "inference.runtime torch and inference.cuda_graph run on the device frame path only; set "
                'inference.frame_path to "device" or "auto", or drop them'
            )
        LineCameras(camera_defaults=self.camera_defaults, cameras=self.cameras)  # unique ids
        return self

    def silent_after_s(self) -> Callable[[str], float]:
        """Each camera's silence limit: its entry's, else `camera_defaults.silent_after_s`."""
        limits = {camera.id: camera.silent_after_s for camera in self.cameras}
        default = self.camera_defaults.silent_after_s
        return lambda camera_id: limits.get(camera_id, default)

    @property
    def db_path(self) -> Path:
        return self.records.workdir / "records.sqlite"

    @property
    def image_dir(self) -> Path:
        return self.records.workdir / "images"

    @property
    def model_cache_dir(self) -> Path:
        """Verified local copies of packages from an object-store registry."""
        return self.records.workdir / "model-cache"


def build_config(
    data: Mapping[str, Any], overrides: Mapping[str, Any] | None = None, source: Path | None = None
) -> InspectorConfig:
    """The validated config from a file's tables and dotted-path overrides (flags); raises ConfigError."""
    merged = merge_defaults(_merge(data, overrides or {}))
    try:
        return InspectorConfig.model_validate(merged)
    except ValidationError as exc:
        text = source.read_text(encoding="utf-8") if source is not None else None
        raise ConfigError(_describe(exc, source, text, overrides or {})) from None


def load_config(path: Path | None, overrides: Mapping[str, Any] | None = None) -> InspectorConfig:
    """Read a TOML config file (or none), apply the overrides and validate."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"{path}: cannot read the config file ({exc.strerror}); check the path"
            ) from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            # The parser's message already ends with "(at line L, column C)".
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return build_config(data, overrides, path)


def _merge(data: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    merged: dict[str, Any] = {
        key: dict(value) if isinstance(value, Mapping) else value for key, value in data.items()
    }
    for dotted, value in overrides.items():
        section, _, key = dotted.partition(".")
        table = merged.setdefault(section, {})
        if isinstance(table, dict):
            table[key] = value
    return merged


_NO_MODEL = "no model to serve; give --model DIR, --registry URL --model-name NAME, or a [model] table"


def _describe(
    exc: ValidationError, source: Path | None, text: str | None, overrides: Mapping[str, Any]
) -> str:
    hints = {("model",): _NO_MODEL}
    lines = describe_errors(exc, source, text, InspectorConfig, overrides, hints)
    return "invalid configuration:\n  " + "\n  ".join(lines)


def to_toml(config: InspectorConfig) -> str:
    """The effective config as a TOML file that `--config` reads back (unset values are left out)."""
    out = []
    for section, values in config.model_dump(mode="json").items():
        # A list of tables (`[[cameras]]`) is one table per entry.
        for table in values if isinstance(values, list) else [values]:
            out.append(f"[[{section}]]" if isinstance(values, list) else f"[{section}]")
            out.extend(f"{key} = {_toml_value(value)}" for key, value in table.items() if value is not None)
            out.append("")
    return "\n".join(out)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):  # e.g. shifts.calendar: an inline table
        items = (f"{_toml_value(str(k))} = {_toml_value(v)}" for k, v in value.items() if v is not None)
        return "{ " + ", ".join(items) + " }"
    if isinstance(value, (int, float)):
        return repr(value)
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
