"""Seeded generator of hostile frame messages for the bus fuzz test and the longer fuzz campaign.

Each message is a list of ZeroMQ parts plus what the generator knows about it: `valid` (an untouched frame
that must be judged and delivered), `invalid` (broken by construction: must be counted as malformed) or
`unknown` (mutated in a way that may or may not still be a valid frame: it must be accounted for one way
or the other). Frames come from a handful of camera ids so the inspector's per-camera state stays small,
and every valid frame has a unique (camera, seq, t_capture_ns), so its result id is unique.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from edge_inspect.bus.contracts import FrameHeader

CAMERAS = ("fuzz-1", "fuzz-2", "検査-3", "ﬁ‮rtl")
ODD_TEXT = (
    "",
    "\x00",
    "\ud800",
    "a" * 5000,
    "😀" * 40,
    "\u200b",
    "../../etc/passwd",
    "cam\r\nX-Evil: 1",
    "%00",
)
EXTREME_NUMBERS = (-1, 2**63, 2**64 + 1, -(2**63) - 1, 10**400, 1e308, 0.5, True, None, "7", [], {})


@dataclass(frozen=True)
class FuzzMessage:
    parts: list[bytes]
    kind: str  # "valid", "invalid" or "unknown"
    camera_id: str | None = None
    seq: int | None = None


class FrameFuzzer:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self._seq = dict.fromkeys(CAMERAS, 0)
        self._jpegs = {channels: self._jpeg(channels) for channels in (1, 3)}

    def _jpeg(self, channels: int) -> bytes:
        image = np.random.default_rng(channels).integers(0, 255, (24, 32, channels), np.uint8)
        return cv2.imencode(".jpg", image)[1].tobytes()

    def valid(self) -> FuzzMessage:
        rng = self.rng
        camera = rng.choice(CAMERAS)
        seq = self._seq[camera]
        self._seq[camera] += 1
        channels = rng.choice((1, 3))
        if rng.random() < 0.3:
            header = FrameHeader(camera, seq, "st-1", 10**18 + seq, 32, 24, channels, "uint8", "jpeg")
            payload = self._jpegs[channels]
        else:
            dtype = rng.choice(("uint8", "uint16"))
            header = FrameHeader(camera, seq, "st-1", 10**18 + seq, 32, 24, channels, dtype, "raw")
            payload = bytes(header.raw_nbytes) if rng.random() < 0.5 else rng.randbytes(header.raw_nbytes)
        return FuzzMessage([header.to_bytes(), payload], "valid", camera, seq)

    def mutated(self) -> FuzzMessage:
        base = self.valid()
        header, payload = base.parts
        mutation = self.rng.choice(_MUTATIONS)
        parts, kind = mutation(self, header, payload)
        return FuzzMessage(parts, kind)

    def messages(self, count: int, valid_share: float = 0.3) -> Iterator[FuzzMessage]:
        for _ in range(count):
            yield self.valid() if self.rng.random() < valid_share else self.mutated()


# Each mutation takes a valid header and payload and returns (parts, kind). Mutated frames never reuse
# the valid frame's identity for a "valid" verdict: a mutation that may survive is "unknown".


def _truncate_header(f: FrameFuzzer, header: bytes, payload: bytes) -> tuple[list[bytes], str]:
    return [header[: f.rng.randrange(len(header))], payload], "invalid"


def _flip_header_bits(f: FrameFuzzer, header: bytes, payload: bytes) -> tuple[list[bytes], str]:
    mutated = bytearray(header)
    for _ in range(f.rng.randint(1, 4)):
        mutated[f.rng.randrange(len(mutated))] ^= 1 << f.rng.randrange(8)
    return [bytes(mutated), payload], "unknown"


def _confuse_type(f: FrameFuzzer, header: bytes, payload: bytes) -> tuple[list[bytes], str]:
    obj = json.loads(header)
    key = f.rng.choice([k for k in obj if k != "v"])
    obj[key] = f.rng.choice(EXTREME_NUMBERS + ODD_TEXT[:3])
    return [_dumps(obj), payload], "unknown"


def _odd_unicode(f: FrameFuzzer, header: bytes, payload: bytes) -> tuple[list[bytes], str]:
    obj = json.loads(header)
    obj[f.rng.choice(("camera_id", "station", "part_id"))] = f.rng.choice(ODD_TEXT)
    return [_dumps(obj), payload], "unknown"


def _deep_nesting(f: FrameFuzzer, header: bytes, payload: bytes) -> tuple[list[bytes], str]:
    depth = f.rng.choice((10, 1000, 100_000))
    return [b'{"v":1,"x":' + b"[" * depth + b"]" * depth + b"}", payload], "invalid"


def _giant_integer(f: FrameFuzzer, header: bytes, payload: bytes) -> tuple[list[bytes], str]:
    obj = json.loads(header)
    text = _dumps(obj).replace(b'"seq":', b'"seq":' + b"9" * f.rng.choice((20, 5000)) + b',"_":', 1)
    return [text, payload], "invalid"


def _random_bytes(f: FrameFuzzer, header: bytes, payload: bytes) -> tuple[list[bytes], str]:
    return [f.rng.randbytes(f.rng.randrange(1, 300)), f.rng.randbytes(f.rng.randrange(0, 300))], "invalid"


def _wrong_part_count(f: FrameFuzzer, header: bytes, payload: bytes) -> tuple[list[bytes], str]:
    return ([header] if f.rng.random() < 0.5 else [header, payload, b"extra"]), "invalid"


def _truncate_payload(f: FrameFuzzer, header: bytes, payload: bytes) -> tuple[list[bytes], str]:
    cut = f.rng.randrange(len(payload))
    # A raw payload of the wrong size is refused; a cut JPEG may still decode partly.
    kind = "invalid" if b'"raw"' in header else "unknown"
    return [header, payload[:cut]], kind


def _flip_payload_bits(f: FrameFuzzer, header: bytes, payload: bytes) -> tuple[list[bytes], str]:
    mutated = bytearray(payload)
    for _ in range(f.rng.randint(1, 8)):
        mutated[f.rng.randrange(len(mutated))] ^= 1 << f.rng.randrange(8)
    return [header, bytes(mutated)], "unknown"


def _extreme_geometry(f: FrameFuzzer, header: bytes, payload: bytes) -> tuple[list[bytes], str]:
    obj = json.loads(header)
    obj[f.rng.choice(("width", "height"))] = f.rng.choice((0, -5, 16385, 2**31, 2**63))
    return [_dumps(obj), payload], "invalid"


def _other_version(f: FrameFuzzer, header: bytes, payload: bytes) -> tuple[list[bytes], str]:
    obj = json.loads(header)
    obj["v"] = f.rng.choice((0, 2, 99, "1", None))
    return [_dumps(obj), payload], "invalid"


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode("utf-8", errors="surrogatepass")


_MUTATIONS = (
    _truncate_header,
    _flip_header_bits,
    _confuse_type,
    _odd_unicode,
    _deep_nesting,
    _giant_integer,
    _random_bytes,
    _wrong_part_count,
    _truncate_payload,
    _flip_payload_bits,
    _extreme_geometry,
    _other_version,
)
