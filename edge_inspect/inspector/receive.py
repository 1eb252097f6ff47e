"""Receive stage: raw multipart messages from the bus to validated frames, or a counted rejection.

Pure: `validate` never touches sockets, so every malformed case is a plain unit test.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_inspect.bus.contracts import ContractError, FrameHeader, parse_header

JPEG_SOI = b"\xff\xd8"


@dataclass(frozen=True)
class ReceivedFrame:
    header: FrameHeader
    # Zero-copy view of the bytes as ZeroMQ delivered them; decoding happens later, in the worker.
    payload: memoryview
    t_received_ns: int


def validate(parts: list[memoryview], t_received_ns: int) -> ReceivedFrame:
    """Check a message against the frame contract; raise ContractError with a stable reason otherwise."""
    if len(parts) != 2:
        raise ContractError(
            "bad_parts",
            f"frame message has {len(parts)} parts; the contract is two parts [header, payload]",
        )
    header = parse_header(parts[0])
    payload = memoryview(parts[1])
    if header.encoding == "raw" and payload.nbytes != header.raw_nbytes:
        raise ContractError(
            "bad_payload_size",
            f"camera {header.camera_id} seq {header.seq}: payload is {payload.nbytes} bytes, header says "
            f"{header.width}x{header.height}x{header.channels} {header.dtype} = {header.raw_nbytes}; "
            "check the camera's pixel format and resolution settings",
        )
    if header.encoding == "jpeg" and bytes(payload[:2]) != JPEG_SOI:
        raise ContractError(
            "corrupt_jpeg",
            f"camera {header.camera_id} seq {header.seq}: payload does not start with a JPEG marker",
        )
    return ReceivedFrame(header, payload, t_received_ns)
