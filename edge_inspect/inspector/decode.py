"""Decode stage: a validated frame's payload to an (H, W, C) pixel array, checked against its header.

The rejections are defined here once; the GPU decoder (`gpu_frames`) raises the very same ones.
"""

from __future__ import annotations

import cv2
import numpy as np

from edge_inspect.bus.contracts import ContractError, FrameHeader, raw_pixels
from edge_inspect.inspector.receive import ReceivedFrame


def corrupt_jpeg(header: FrameHeader) -> ContractError:
    return ContractError(
        "corrupt_jpeg",
        f"camera {header.camera_id} seq {header.seq}: JPEG payload could not be decoded "
        "(truncated or corrupt); check the gateway's encoder and the link",
    )


def shape_mismatch(header: FrameHeader, shape: tuple[int, ...], dtype: str) -> ContractError | None:
    """The rejection of a decoded image that disagrees with its header; None when it agrees."""
    if shape == header.shape and dtype == header.dtype:
        return None
    return ContractError(
        "shape_mismatch",
        f"camera {header.camera_id} seq {header.seq}: decoded JPEG is {shape} {dtype}, "
        f"header says {header.shape} {header.dtype}",
    )


# Start-of-frame markers (baseline, extended, progressive, lossless; Huffman and arithmetic): the ones whose
# segment carries the image's height, width and component count.
_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
# Markers without a length field.
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})


def jpeg_geometry(payload: memoryview | bytes) -> tuple[int, int, int] | None:
    """(height, width, components) from a JPEG's start-of-frame segment, read without decoding; None when
    no such segment is found before the scan data."""
    data = bytes(payload[: 1 << 16]) if len(payload) > 1 << 16 else bytes(payload)
    pos = 2  # after SOI
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker in _SOF_MARKERS and pos + 10 <= len(data):
            height = int.from_bytes(data[pos + 5 : pos + 7], "big")
            width = int.from_bytes(data[pos + 7 : pos + 9], "big")
            return height, width, data[pos + 9]
        if marker == 0xDA or length < 2:  # scan data before any frame header, or a broken length
            return None
        pos += 2 + length
    return None


def decode(frame: ReceivedFrame) -> np.ndarray:
    """Raw payloads become a zero-copy view; JPEG is decoded on the CPU after its declared geometry was
    checked against the header, so a small file claiming a huge image is never decompressed. Raises
    ContractError."""
    header = frame.header
    if header.encoding == "raw":
        return raw_pixels(header, frame.payload)
    geometry = jpeg_geometry(frame.payload)
    if geometry is None:
        raise corrupt_jpeg(header)
    if geometry != header.shape:
        raise ContractError(
            "shape_mismatch",
            f"camera {header.camera_id} seq {header.seq}: JPEG declares {geometry[1]}x{geometry[0]} with "
            f"{geometry[2]} channel(s), header says {header.width}x{header.height}x{header.channels}; it was "
            "not decoded",
        )
    image = cv2.imdecode(np.frombuffer(frame.payload, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise corrupt_jpeg(header)
    if image.ndim == 2:
        image = image[:, :, None]
    mismatch = shape_mismatch(header, image.shape, str(image.dtype))
    if mismatch is not None:
        raise mismatch
    return image
