from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from edge_inspect.bus.contracts import ContractError, FrameHeader, encode_frame, parse_header
from edge_inspect.inspector.decode import decode, jpeg_geometry
from edge_inspect.inspector.receive import ReceivedFrame, validate


def frame_parts(image: np.ndarray, encoding: str = "raw") -> list[memoryview]:
    h, w = image.shape[:2]
    channels = 1 if image.ndim == 2 else image.shape[2]
    header = FrameHeader("cam", 1, "st", 10, w, h, channels, str(image.dtype), encoding)
    payload = image if encoding == "raw" else cv2.imencode(".jpg", image)[1].tobytes()
    return [
        memoryview(bytes(p)) if isinstance(p, bytes) else memoryview(p) for p in encode_frame(header, payload)
    ]


def test_raw_and_jpeg_frames_decode_to_the_header_shape() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
    raw = decode(validate(frame_parts(image), 11))
    assert np.array_equal(raw, image)
    smooth = cv2.GaussianBlur(image, (7, 7), 3)
    jpeg = decode(validate(frame_parts(smooth, "jpeg"), 11))
    assert jpeg.shape == (24, 32, 3) and np.abs(jpeg.astype(int) - smooth).mean() < 8
    mono = decode(validate(frame_parts(smooth[:, :, 0], "jpeg"), 11))
    assert mono.shape == (24, 32, 1)


def test_truncated_payload_wrong_parts_and_corrupt_jpeg_are_rejected() -> None:
    image = np.ones((8, 8), np.uint8)
    head, payload = frame_parts(image)
    with pytest.raises(ContractError) as info:
        validate([head, payload[:-1]], 0)
    assert info.value.reason == "bad_payload_size"
    with pytest.raises(ContractError) as info:
        validate([head], 0)
    assert info.value.reason == "bad_parts"
    jhead, jpayload = frame_parts(np.full((16, 16), 128, np.uint8), "jpeg")
    with pytest.raises(ContractError) as info:
        validate([jhead, memoryview(b"GIF89a....")], 0)
    assert info.value.reason == "corrupt_jpeg"
    truncated = validate([jhead, jpayload[:20]], 0)  # starts like a JPEG, then stops
    with pytest.raises(ContractError) as info:
        decode(truncated)
    assert info.value.reason == "corrupt_jpeg"


def test_jpeg_whose_size_disagrees_with_the_header_is_a_shape_mismatch() -> None:
    _, payload = frame_parts(np.full((16, 16), 128, np.uint8), "jpeg")
    header = FrameHeader("cam", 1, "st", 10, 20, 16, 1, "uint8", "jpeg")
    with pytest.raises(ContractError) as info:
        decode(validate([memoryview(header.to_bytes()), payload], 0))
    assert info.value.reason == "shape_mismatch"


def jpeg_frame(image: np.ndarray, width: int, height: int, payload: bytes | None = None) -> ReceivedFrame:
    ok, encoded = cv2.imencode(".jpg", image)
    assert ok
    header = FrameHeader(
        "cam-j", 1, "st", 0, width, height, image.shape[2] if image.ndim == 3 else 1, "uint8", "jpeg"
    )
    return ReceivedFrame(header, memoryview(payload if payload is not None else encoded.tobytes()), 0)


def test_jpeg_geometry_is_read_from_the_frame_header_without_decoding() -> None:
    image = np.random.default_rng(0).integers(0, 255, (48, 64, 3), np.uint8)
    frame = jpeg_frame(image, 64, 48)
    assert jpeg_geometry(frame.payload) == (48, 64, 3)
    assert decode(frame).shape == (48, 64, 3)
    assert jpeg_geometry(b"\xff\xd8\xff\xda\x00\x08") is None


def test_a_jpeg_claiming_a_huge_image_is_refused_before_decoding() -> None:
    image = np.zeros((48, 64), np.uint8)
    encoded = bytearray(cv2.imencode(".jpg", image)[1].tobytes())
    sof = encoded.index(b"\xff\xc0")
    encoded[sof + 5 : sof + 9] = (60000).to_bytes(2, "big") + (60000).to_bytes(2, "big")
    with pytest.raises(ContractError, match=r"JPEG declares 60000x60000.*not decoded") as info:
        decode(jpeg_frame(image, 64, 48, bytes(encoded)))
    assert info.value.reason == "shape_mismatch"
    huge = json.dumps({**json.loads(FrameHeader("c", 1, "s", 0, 16000, 16000, 1).to_bytes())}).encode()
    with pytest.raises(ContractError, match="exceeds 67108864 pixels"):
        parse_header(huge)
