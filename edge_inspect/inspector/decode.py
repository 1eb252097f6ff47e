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


def decode(frame: ReceivedFrame) -> np.ndarray:
    """Raw payloads become a zero-copy view; JPEG is decoded on the CPU. Raises ContractError."""
    header = frame.header
    if header.encoding == "raw":
        return raw_pixels(header, frame.payload)
    image = cv2.imdecode(np.frombuffer(frame.payload, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise corrupt_jpeg(header)
    if image.ndim == 2:
        image = image[:, :, None]
    mismatch = shape_mismatch(header, image.shape, str(image.dtype))
    if mismatch is not None:
        raise mismatch
    return image
