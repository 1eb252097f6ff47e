"""The cameras of a line, as the line config declares them (`[camera_defaults]` and `[[cameras]]`).

One file describes the whole line: the inspector reads its own sections and these two (for each camera's
silence limit), and each gateway runs one entry (`edge-inspect camera --config line.toml --camera ID`).
`[camera_defaults]` is merged under every entry, so what all cameras share is written once; an entry's own
keys win. Each entry's `source` chooses its adapter and the keys it accepts; unknown keys are refused
with the file, line and key named (`inspector/toml_errors.py`).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edge_inspect.bus.contracts import MAX_ID_CHARS
from edge_inspect.camera_adapters.aravis import AravisSettings
from edge_inspect.camera_adapters.genicam import GenICamSettings, Roi
from edge_inspect.camera_adapters.gentl import GenTLSettings
from edge_inspect.camera_adapters.rtsp import RtspSettings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


class _Strict(BaseModel):
    # Errors never repeat the input: a camera URL may carry a password.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


CameraId = Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS, pattern=r"^[^\x00-\x1f\x7f]+$")]


class MqttPartIds(_Strict):
    """Part ids published on an MQTT topic (a barcode reader, a PLC through a gateway): the payload is the
    id as text, or a JSON object with a `part_id` field."""

    source: Literal["mqtt"]
    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    topic: str = Field(min_length=1)
    username: str | None = None
    password_file: Path | None = None
    ca_file: Path | None = None
    match: Literal["next", "latest"] = "next"
    max_age_s: float = Field(10.0, gt=0)


class OpcUaPartIds(_Strict):
    """Part ids from a PLC variable over OPC UA (a part counter or a barcode string), by subscription."""

    source: Literal["opcua"]
    endpoint: str = Field(pattern=r"^opc\.tcp://")
    node: str = Field(min_length=1, description="node id, e.g. ns=2;s=Station1.PartId")
    match: Literal["next", "latest"] = "next"
    max_age_s: float = Field(10.0, gt=0)


class FrameIdPartIds(_Strict):
    """The camera's own frame id as the part id (a line-scan or hardware-triggered camera counting parts),
    written as `<prefix><frame id>`."""

    source: Literal["frame_id"]
    prefix: str = ""


PartIdsConfig = Annotated[MqttPartIds | OpcUaPartIds | FrameIdPartIds, Field(discriminator="source")]


class CameraCommon(_Strict):
    """What every camera entry has, whatever its source; `[camera_defaults]` sets these for all."""

    id: CameraId
    station: CameraId = "station-1"
    endpoint: str = "tcp://127.0.0.1:5555"
    delivery: Literal["lossless", "latest"] = "lossless"
    # 0: as the camera delivers (live cameras pace themselves); files and synthetic parts need a rate.
    fps: float = Field(0.0, ge=0)
    encoding: Literal["raw", "jpeg"] = "raw"
    jpeg_quality: int = Field(90, ge=0, le=100)
    replay_mb: float = Field(256.0, gt=0)
    drain_s: float = Field(30.0, ge=0)
    state_dir: Path | None = None
    key: Path | None = None
    server_key: Path | None = None
    # The inspector reports the camera silent (metrics, outputs, console) after this long without a frame.
    silent_after_s: float = Field(10.0, gt=0)
    part_ids: PartIdsConfig | None = None


class SyntheticCamera(CameraCommon):
    source: Literal["synthetic"]
    fps: float = Field(10.0, ge=0)
    width: int = Field(640, ge=8, le=16384)
    height: int = Field(480, ge=8, le=16384)
    channels: Literal[1, 3] = 3
    defect_rate: float = Field(0.1, ge=0, le=1)
    seed: int = 0


class FolderCamera(CameraCommon):
    source: Literal["folder"]
    fps: float = Field(10.0, ge=0)
    path: Path
    loop: bool = False


class VideoCamera(CameraCommon):
    """A video file or a USB camera through OpenCV (RTSP cameras have their own source, `rtsp`)."""

    source: Literal["video"]
    fps: float = Field(10.0, ge=0)
    uri: str = Field(min_length=1)
    loop: bool = False


class GenICamFields(_Strict):
    """The GenICam features a GigE Vision or GenTL camera entry sets (camera_adapters/genicam.py has their
    meaning and limits); a key left out keeps the camera's own value or the adapter's default."""

    pixel_format: str | None = None
    exposure_us: float | None = None
    gain: float | None = None
    frame_rate: float | None = None
    roi: Roi | None = None
    trigger: Literal["free", "software", "line"] | None = None
    trigger_source: str | None = None
    buffers: int | None = None
    frame_timeout_s: float | None = None
    reconnect_first_s: float | None = None
    reconnect_max_s: float | None = None

    def genicam(self) -> GenICamSettings:
        given = {name: getattr(self, name) for name in GenICamFields.model_fields}
        return GenICamSettings(**{name: value for name, value in given.items() if value is not None})


class AravisCamera(CameraCommon, GenICamFields):
    """A GigE Vision camera through Aravis, opened by `address` (no discovery) or `device_id`."""

    source: Literal["aravis"]
    address: str | None = None
    device_id: str | None = None
    packet_size: int | None = None
    socket_buffer_bytes: int | None = None

    def settings(self) -> AravisSettings:
        return AravisSettings(
            address=self.address,
            device_id=self.device_id,
            camera=self.genicam(),
            packet_size=self.packet_size,
            socket_buffer_bytes=self.socket_buffer_bytes,
        )

    @model_validator(mode="after")
    def _valid(self) -> AravisCamera:
        self.settings()  # the adapter's own checks, at load time, with this entry's location
        return self


class GenTLCamera(CameraCommon, GenICamFields):
    """A vendor camera through its GenTL producer (`cti`) and harvesters."""

    source: Literal["gentl"]
    cti: Path
    serial_number: str | None = None
    device_id: str | None = None

    def settings(self) -> GenTLSettings:
        return GenTLSettings(
            cti=self.cti, serial_number=self.serial_number, device_id=self.device_id, camera=self.genicam()
        )

    @model_validator(mode="after")
    def _valid(self) -> GenTLCamera:
        self.settings()
        return self


class RtspCamera(CameraCommon):
    """An RTSP / H.264 IP camera (camera_adapters/rtsp.py has the meaning of each key)."""

    source: Literal["rtsp"]
    url: str
    transport: Literal["tcp", "udp"] = "tcp"
    open_timeout_s: float | None = None
    read_timeout_s: float | None = None
    stale_after_s: float | None = None
    reconnect_first_s: float | None = None
    reconnect_max_s: float | None = None
    expected_fps: float | None = None

    def settings(self) -> RtspSettings:
        names = [name for name in RtspSettings.__dataclass_fields__ if name not in ("url", "transport")]
        given = {name: getattr(self, name) for name in names if getattr(self, name) is not None}
        return RtspSettings(url=self.url, transport=self.transport, **given)

    @model_validator(mode="after")
    def _valid(self) -> RtspCamera:
        self.settings()
        return self


CameraEntry = Annotated[
    SyntheticCamera | FolderCamera | VideoCamera | AravisCamera | GenTLCamera | RtspCamera,
    Field(discriminator="source"),
]
DEFAULT_KEYS = frozenset(CameraCommon.model_fields) - {"id", "part_ids"}


class CameraDefaults(_Strict):
    """`[camera_defaults]`: any key every camera entry has, merged under each of them."""

    station: CameraId | None = None
    endpoint: str | None = None
    delivery: Literal["lossless", "latest"] | None = None
    fps: float | None = Field(None, ge=0)
    encoding: Literal["raw", "jpeg"] | None = None
    jpeg_quality: int | None = Field(None, ge=0, le=100)
    replay_mb: float | None = Field(None, gt=0)
    drain_s: float | None = Field(None, ge=0)
    state_dir: Path | None = None
    key: Path | None = None
    server_key: Path | None = None
    silent_after_s: float = Field(10.0, gt=0)


class LineCameras(_Strict):
    """The two camera sections of a line config, validated together."""

    camera_defaults: CameraDefaults = CameraDefaults()
    cameras: list[CameraEntry] = []

    @field_validator("cameras")
    @classmethod
    def _unique_ids(cls, cameras: list[CameraCommon]) -> list[CameraCommon]:
        seen: set[str] = set()
        for camera in cameras:
            if camera.id in seen:
                raise ValueError(f"camera id {camera.id!r} appears twice; every camera needs its own id")
            seen.add(camera.id)
        return cameras

    def camera(self, camera_id: str) -> CameraCommon:
        for camera in self.cameras:
            if camera.id == camera_id:
                return camera
        known = ", ".join(camera.id for camera in self.cameras) or "none"
        raise KeyError(f"no camera {camera_id!r} in the config's [[cameras]] (known: {known})")

    def silent_after_s(self) -> dict[str, float]:
        return {camera.id: camera.silent_after_s for camera in self.cameras}


def merge_defaults(data: Mapping[str, Any]) -> dict[str, Any]:
    """The config's tables with `[camera_defaults]` merged under each `[[cameras]]` entry.

    Raw dicts in, raw dicts out: validation (and its errors, with file and line) happens afterwards on the
    merged data. Only the keys camera entries share are merged; `silent_after_s` too."""
    defaults = data.get("camera_defaults")
    cameras = data.get("cameras")
    if not isinstance(defaults, Mapping) or not isinstance(cameras, list):
        return dict(data)
    shared = {key: value for key, value in defaults.items() if key in DEFAULT_KEYS}
    merged = [{**shared, **entry} if isinstance(entry, Mapping) else entry for entry in cameras]
    return {**data, "cameras": merged}


class CameraConfigError(ValueError):
    """A line config whose camera sections cannot run; the message names the file, line and key."""


def load_line_cameras(path: Path) -> LineCameras:
    """The camera sections of a line config file, validated on their own: a gateway needs nothing else of
    the file (the inspector's sections are the inspector's to check)."""
    from edge_inspect.inspector.toml_errors import describe_errors

    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text)
    except OSError as exc:
        raise CameraConfigError(
            f"{path}: cannot read the line config ({exc.strerror}); check the path"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise CameraConfigError(f"{path}: not valid TOML: {exc}") from None
    sections = {key: data[key] for key in ("camera_defaults", "cameras") if key in data}
    try:
        return LineCameras.model_validate(merge_defaults(sections))
    except ValidationError as exc:
        lines = describe_errors(exc, path, text, LineCameras)
        raise CameraConfigError("invalid camera configuration:\n  " + "\n  ".join(lines)) from None
