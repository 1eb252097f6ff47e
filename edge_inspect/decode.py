"""Decode stage: a validated frame's payload to an (H, W, C) pixel array, checked against its header."""

from __future__ import annotations

import cv2
import numpy as np

from edge_inspect.contracts import ContractError, raw_pixels
from edge_inspect.receive import ReceivedFrame


def decode(frame: ReceivedFrame) -> np.ndarray:
    """Raw payloads become a zero-copy view; JPEG is decoded on the CPU. Raises ContractError."""
    header = frame.header
    if header.encoding == "raw":
        return raw_pixels(header, frame.payload)
    encoded = np.frombuffer(frame.payload, dtype=np.uint8)
    image = cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ContractError(
            "corrupt_jpeg",
            f"camera {header.camera_id} seq {header.seq}: JPEG payload could not be decoded "
            "(truncated or corrupt); check the gateway's encoder and the link",
        )
    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape != header.shape or image.dtype != np.dtype(header.dtype):
        raise ContractError(
            "shape_mismatch",
            f"camera {header.camera_id} seq {header.seq}: decoded JPEG is {image.shape} {image.dtype}, "
            f"header says {header.shape} {header.dtype}",
        )
    return image
