"""The wire contracts: the frame message on the bus and the inspection result.

This module is the one place that defines them (docs/contracts.md describes them for integrators).
It imports nothing heavier than numpy so that the camera gateways can use it.
Every schema carries a version; a receiver refuses versions it does not know.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

FRAME_SCHEMA_VERSION = 1
RESULT_SCHEMA_VERSION = 1

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


class ContractError(ValueError):
    """A message broke the contract. `reason` is a short, stable label used as a metric label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class FrameHeader:
    """First part of the two-part ZeroMQ frame message `[header, payload]`."""

    camera_id: str
    seq: int
    station: str
    t_capture_ns: int
    width: int
    height: int
    channels: int
    dtype: str = "uint8"
    encoding: str = "raw"
    part_id: str | None = None
    delivery: str = "lossless"
    v: int = FRAME_SCHEMA_VERSION

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @property
    def raw_nbytes(self) -> int:
        return self.width * self.height * self.channels * np.dtype(self.dtype).itemsize

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)


_HEADER_TYPES: dict[str, type | tuple[type, ...]] = {
    "camera_id": str,
    "seq": int,
    "station": str,
    "t_capture_ns": int,
    "width": int,
    "height": int,
    "channels": int,
    "dtype": str,
    "encoding": str,
    "part_id": (str, type(None)),
    "delivery": str,
    "v": int,
}
_REQUIRED = ("v", "camera_id", "seq", "station", "t_capture_ns", "width", "height", "channels")


def parse_header(raw: bytes | memoryview) -> FrameHeader:
    """Parse and validate a frame header; raise ContractError saying what is wrong and how to fix it."""
    try:
        obj = json.loads(bytes(raw))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ContractError(
            "bad_json", f"frame header is not valid JSON ({exc}); send compact UTF-8 JSON"
        ) from exc
    if not isinstance(obj, dict):
        raise ContractError("bad_json", "frame header must be a JSON object")
    version = obj.get("v")
    if version != FRAME_SCHEMA_VERSION:
        raise ContractError(
            "unknown_schema",
            f"frame schema version {version!r} is not supported "
            f"(this inspector speaks v{FRAME_SCHEMA_VERSION}); "
            "upgrade the camera gateway or the inspector so both speak the same version",
        )
    missing = [k for k in _REQUIRED if k not in obj]
    if missing:
        raise ContractError("missing_field", f"frame header lacks required field(s) {missing}")
    unknown = sorted(set(obj) - set(_HEADER_TYPES))
    if unknown:
        raise ContractError("unknown_field", f"frame header has unknown field(s) {unknown}")
    for key, value in obj.items():
        expected = _HEADER_TYPES[key]
        # bool is an int subclass in Python, but never a valid count or id here.
        if isinstance(value, bool) or not isinstance(value, expected):
            raise ContractError("bad_field", f"frame header field {key!r}={value!r} has the wrong type")
    header = FrameHeader(**obj)
    if header.encoding not in ENCODINGS:
        raise ContractError("bad_field", f"encoding {header.encoding!r} is not one of {ENCODINGS}")
    if header.delivery not in DELIVERIES:
        raise ContractError("bad_field", f"delivery {header.delivery!r} is not one of {DELIVERIES}")
    if header.dtype not in DTYPES:
        raise ContractError("bad_field", f"dtype {header.dtype!r} is not one of {DTYPES}")
    if header.channels not in CHANNELS:
        raise ContractError("bad_field", f"channels={header.channels} must be 1 (mono) or 3 (BGR)")
    if not (0 < header.width <= MAX_SIDE and 0 < header.height <= MAX_SIDE):
        raise ContractError(
            "bad_field", f"frame size {header.width}x{header.height} is outside 1..{MAX_SIDE}"
        )
    if header.seq < 0 or not header.camera_id:
        raise ContractError("bad_field", "seq must be >= 0 and camera_id non-empty")
    return header


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

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict {self.verdict!r} is not one of {VERDICTS}")
        if not self.result_id:
            object.__setattr__(self, "result_id", f"{self.camera_id}:{self.t_capture_ns}:{self.seq}")

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
