"""The wire contracts: the frame message on the bus and the inspection result.

This module is the one place that defines them (docs/contracts.md describes them for integrators).
It imports nothing heavier than numpy so that the camera gateways can use it.
Every schema carries a version; a receiver refuses versions it does not know.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any, Literal

import msgspec
import numpy as np
from msgspec import Meta

FRAME_SCHEMA_VERSION = 1
RESULT_SCHEMA_VERSION = 1
# Version of the bus control messages (`Hello`, `Ack`): the one-part messages beside the frames.
BUS_CONTROL_VERSION = 1

Encoding = Literal["raw", "jpeg"]
Delivery = Literal["lossless", "latest"]
Verdict = Literal["OK", "NG", "REVIEW"]

ENCODINGS: tuple[str, ...] = ("raw", "jpeg")
DELIVERIES: tuple[str, ...] = ("lossless", "latest")
VERDICTS: tuple[str, ...] = ("OK", "NG", "REVIEW")
# Pixel formats a camera may send: 8-bit for mono8/bgr8, 16-bit for high-dynamic-range mono sensors.
DTYPES: tuple[str, ...] = ("uint8", "uint16")
CHANNELS: tuple[int, ...] = (1, 3)
MAX_SIDE = 16384
# Pixels per frame (a 16k line-scan camera at 4096 lines): bounds what any one frame may make us allocate.
MAX_PIXELS = 2**26


class ContractError(ValueError):
    """A message broke the contract. `reason` is a short, stable label used as a metric label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


# Limits of the frame header, checked when it is decoded: ranges are the real ones (int64 for counters and
# clocks), strings are bounded, and ids refuse control characters (they reach file names, HTTP headers,
# MQTT topics and SQL, where each sink encodes them for its own place).
MAX_HEADER_BYTES = 4096
MAX_ID_CHARS = 128
INT64_MAX = 2**63 - 1
_PRINTABLE = r"^[^\x00-\x1f\x7f]+$"
IdText = Annotated[str, Meta(min_length=1, max_length=MAX_ID_CHARS, pattern=_PRINTABLE)]
Count = Annotated[int, Meta(ge=0, le=INT64_MAX)]
Side = Annotated[int, Meta(ge=1, le=MAX_SIDE)]


class CameraHealth(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The gateway's counters for its camera device, sent with every frame (the inspector exposes the
    newest per camera). Counts since the gateway started: a gateway restart begins them again at 0.

    `captured`: frames the gateway took from the device; `reconnects`: times the device or stream was
    reopened after a failure; `underruns`: frames the device produced that never reached the gateway (lost
    or incomplete buffers, gaps in the camera's own frame ids); `stale_events`: times the stream delivered
    nothing for longer than its watchdog allows."""

    captured: Count = 0
    reconnects: Count = 0
    underruns: Count = 0
    stale_events: Count = 0


class FrameHeader(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """First part of the two-part ZeroMQ frame message `[header, payload]`.

    Decoded in one typed step (`parse_header`); the constraints apply to what arrives on the bus."""

    camera_id: IdText
    seq: Count
    station: IdText
    t_capture_ns: Count
    width: Side
    height: Side
    channels: Literal[1, 3]
    dtype: Literal["uint8", "uint16"] = "uint8"
    encoding: Literal["raw", "jpeg"] = "raw"
    part_id: IdText | None = None
    delivery: Literal["lossless", "latest"] = "lossless"
    v: int = FRAME_SCHEMA_VERSION
    # Added within v1 (optional, so older gateways still speak it): the camera's own frame id and clock
    # (GigE Vision block id and device timestamp, an RTSP stream's presentation time), and the gateway's
    # device counters.
    source_frame_id: Count | None = None
    t_source_ns: Count | None = None
    health: CameraHealth | None = None

    def to_bytes(self) -> bytes:
        return msgspec.json.encode(self)

    @property
    def raw_nbytes(self) -> int:
        return self.width * self.height * self.channels * np.dtype(self.dtype).itemsize

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)


class _Versioned(msgspec.Struct):
    """Only the schema version, read when a header fails to decode as this version's."""

    v: Any = None


def parse_header(raw: bytes | memoryview) -> FrameHeader:
    """Decode and validate a frame header; raise ContractError saying what is wrong and how to fix it."""
    size = len(raw) if isinstance(raw, bytes) else raw.nbytes
    if size > MAX_HEADER_BYTES:
        raise ContractError(
            "header_too_large", f"frame header is {size} bytes; the limit is {MAX_HEADER_BYTES}"
        )
    try:
        header = msgspec.json.decode(raw, type=FrameHeader)
    except msgspec.ValidationError as exc:
        _refuse_other_versions(raw)
        raise ContractError(_validation_reason(str(exc)), f"frame header refused: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ContractError(
            "bad_json", f"frame header is not valid JSON ({exc}); send compact UTF-8 JSON"
        ) from None
    except RecursionError:
        raise ContractError(
            "bad_json", "frame header is nested too deeply; send a flat JSON object"
        ) from None
    if header.v != FRAME_SCHEMA_VERSION:
        _refuse_other_versions(raw)
    if header.width * header.height > MAX_PIXELS:
        raise ContractError(
            "bad_field",
            f"frame size {header.width}x{header.height} exceeds {MAX_PIXELS} pixels; send a smaller ROI",
        )
    return header


def _refuse_other_versions(raw: bytes | memoryview) -> None:
    try:
        version = msgspec.json.decode(raw, type=_Versioned).v
    except (msgspec.MsgspecError, RecursionError):
        return
    if version != FRAME_SCHEMA_VERSION:
        raise ContractError(
            "unknown_schema",
            f"frame schema version {version!r} is not supported "
            f"(this inspector speaks v{FRAME_SCHEMA_VERSION}); "
            "upgrade the camera gateway or the inspector so both speak the same version",
        )


def _validation_reason(message: str) -> str:
    if message.startswith("Object missing required field"):
        return "missing_field"
    if message.startswith("Object contains unknown field"):
        return "unknown_field"
    if message.startswith("Expected `object`"):
        return "bad_json"
    return "bad_field"


def result_id_of(camera_id: str, t_capture_ns: int, seq: int) -> str:
    """The id of the result of one frame: the same frame (a replay too) always maps to the same id."""
    return f"{camera_id}:{t_capture_ns}:{seq}"


class Hello(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="hello", tag_field="kind"):
    """Camera → inspector, one part: "I am here, how much credit do I have?". Sent by a lossless camera
    when its socket is (re)made and as a heartbeat while it has not heard from the inspector."""

    camera_id: IdText
    delivery: Literal["lossless", "latest"] = "lossless"
    v: int = BUS_CONTROL_VERSION


class Ack(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="ack", tag_field="kind"):
    """Inspector → camera, one part (the ROUTER addresses it). `seqs`: frames whose result is committed
    (record and MES outbox row, one transaction), or were already recorded (a replayed duplicate): the
    camera forgets them. `rejected`: frames refused by the frame contract; resending cannot help.
    `credit`: how many frames the camera may have sent and not yet had acknowledged (a window, not an
    increment, so a lost Ack never leaks credit). `max_message_bytes`: the largest frame message the
    inspector accepts; a bigger one would only get the camera disconnected."""

    camera_id: IdText
    seqs: list[Count] = []
    rejected: list[Count] = []
    credit: Count = 0
    max_message_bytes: Count = 0
    v: int = BUS_CONTROL_VERSION


Control = Hello | Ack
_CONTROL_DECODER = msgspec.json.Decoder(Control)


def encode_control(message: Control) -> bytes:
    return msgspec.json.encode(message)


def parse_control(raw: bytes | memoryview) -> Control:
    """Decode a one-part bus control message; ContractError (`bad_control`, `unknown_schema`) otherwise."""
    size = len(raw) if isinstance(raw, bytes) else raw.nbytes
    if size > MAX_HEADER_BYTES * 16:
        raise ContractError("bad_control", f"control message is {size} bytes; too large")
    try:
        message = _CONTROL_DECODER.decode(raw)
    except (msgspec.MsgspecError, RecursionError) as exc:
        raise ContractError(
            "bad_control",
            f"one-part message is not a bus control message ({exc}); frames are two parts [header, payload]",
        ) from None
    if message.v != BUS_CONTROL_VERSION:
        raise ContractError(
            "unknown_schema",
            f"bus control version {message.v!r} is not supported (this end speaks v{BUS_CONTROL_VERSION})",
        )
    return message


def encode_frame(header: FrameHeader, payload: np.ndarray | bytes) -> list[bytes | memoryview]:
    """The two message parts. A contiguous array travels as a buffer view, never copied here."""
    if isinstance(payload, np.ndarray):
        payload = memoryview(np.ascontiguousarray(payload)).cast("B")
    return [header.to_bytes(), payload]


def raw_pixels(header: FrameHeader, payload: memoryview | bytes) -> np.ndarray:
    """A zero-copy numpy view of a raw payload, checked against the header's geometry."""
    nbytes = len(payload) if isinstance(payload, bytes) else payload.nbytes
    if nbytes != header.raw_nbytes:
        raise ContractError(
            "bad_payload_size",
            f"payload is {nbytes} bytes but header says {header.width}x{header.height}x{header.channels} "
            f"{header.dtype} = {header.raw_nbytes} bytes; check the camera's pixel format",
        )
    return np.frombuffer(payload, dtype=header.dtype).reshape(header.shape)


@dataclass(frozen=True)
class Defect:
    """One defect found on a part. `bbox` is (x, y, width, height) in frame pixels."""

    cls: str
    score: float
    bbox: tuple[int, int, int, int] | None = None
    area_px: int | None = None


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: str
    sha256: str


@dataclass(frozen=True)
class StageTimings:
    """Milliseconds spent in each stage for one frame; `total` is capture to verdict."""

    transport: float = 0.0
    queue: float = 0.0
    decode: float = 0.0
    preprocess: float = 0.0
    infer: float = 0.0
    postprocess: float = 0.0
    total: float = 0.0


STAGES: tuple[str, ...] = ("transport", "queue", "decode", "preprocess", "infer", "postprocess", "total")


@dataclass(frozen=True)
class InspectionResult:
    camera_id: str
    seq: int
    part_id: str | None
    station: str
    t_capture_ns: int
    verdict: str
    score: float
    threshold: float
    defects: list[Defect]
    model: ModelRef
    timings_ms: StageTimings
    image_path: str | None = None
    v: int = RESULT_SCHEMA_VERSION
    # Stable id of this result, used as the MES Idempotency-Key: the same frame always maps to the same key.
    result_id: str = field(default="")
    # The rule that decided the verdict (inspector/recipe.py: "review_band", "min_area:crack", ...) and the
    # sha256 of the recipe file it was judged under (None: the config's own rules). Optional, so results
    # recorded before them still read.
    rule: str | None = None
    recipe: str | None = None

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict {self.verdict!r} is not one of {VERDICTS}")
        if not self.result_id:
            object.__setattr__(self, "result_id", result_id_of(self.camera_id, self.t_capture_ns, self.seq))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> InspectionResult:
        if obj.get("v") != RESULT_SCHEMA_VERSION:
            raise ContractError("unknown_schema", f"result schema version {obj.get('v')!r} is not supported")
        fields = dict(obj)
        fields["defects"] = [
            Defect(**{**d, "bbox": tuple(d["bbox"]) if d.get("bbox") is not None else None})
            for d in obj["defects"]
        ]
        fields["model"] = ModelRef(**obj["model"])
        fields["timings_ms"] = StageTimings(**obj["timings_ms"])
        return cls(**fields)
