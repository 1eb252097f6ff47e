from __future__ import annotations

import json

import numpy as np
import pytest

from edge_inspect.bus.contracts import (
    ContractError,
    Defect,
    FrameHeader,
    InspectionResult,
    ModelRef,
    StageTimings,
    encode_frame,
    parse_header,
    raw_pixels,
)


def header(**overrides) -> FrameHeader:
    fields = dict(camera_id="cam1", seq=7, station="st1", t_capture_ns=123, width=4, height=3, channels=1)
    fields.update(overrides)
    return FrameHeader(**fields)


def test_header_round_trip_and_zero_copy_payload() -> None:
    image = np.arange(12, dtype=np.uint8).reshape(3, 4, 1)
    head, payload = encode_frame(header(part_id="p-1"), image)
    parsed = parse_header(head)
    assert parsed == header(part_id="p-1")
    view = raw_pixels(parsed, payload)
    assert np.array_equal(view, image)
    # The view shares memory with the payload buffer: no copy on the receive side.
    assert np.shares_memory(view, np.frombuffer(payload, dtype=np.uint8))


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "bad_json"),
        (b"[1, 2]", "bad_json"),
        (json.dumps({**json.loads(header().to_bytes()), "v": 99}).encode(), "unknown_schema"),
        (
            json.dumps({k: v for k, v in json.loads(header().to_bytes()).items() if k != "seq"}).encode(),
            "missing_field",
        ),
        (json.dumps({**json.loads(header().to_bytes()), "seq": "7"}).encode(), "bad_field"),
        (json.dumps({**json.loads(header().to_bytes()), "width": True}).encode(), "bad_field"),
        (json.dumps({**json.loads(header().to_bytes()), "channels": 2}).encode(), "bad_field"),
        (json.dumps({**json.loads(header().to_bytes()), "encoding": "png"}).encode(), "bad_field"),
        (json.dumps({**json.loads(header().to_bytes()), "dtype": "float32"}).encode(), "bad_field"),
        (json.dumps({**json.loads(header().to_bytes()), "width": 0}).encode(), "bad_field"),
        (json.dumps({**json.loads(header().to_bytes()), "extra": 1}).encode(), "unknown_field"),
    ],
)
def test_bad_headers_are_rejected_with_a_stable_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(ContractError) as info:
        parse_header(raw)
    assert info.value.reason == reason
    assert str(info.value)


def test_wrong_payload_size_says_what_to_check() -> None:
    with pytest.raises(ContractError, match="pixel format") as info:
        raw_pixels(header(), b"\x00" * 11)
    assert info.value.reason == "bad_payload_size"


def test_result_json_round_trip_and_stable_id() -> None:
    result = InspectionResult(
        camera_id="cam1",
        seq=3,
        part_id=None,
        station="st1",
        t_capture_ns=42,
        verdict="NG",
        score=0.9,
        threshold=0.5,
        defects=[Defect("crack", 0.9, (1, 2, 3, 4), 12)],
        model=ModelRef("m", "1", "abc"),
        timings_ms=StageTimings(total=5.0),
    )
    again = InspectionResult.from_dict(json.loads(result.to_json()))
    assert again == result
    assert result.result_id == "cam1:42:3"
    with pytest.raises(ValueError, match="verdict"):
        InspectionResult(
            **{
                **result.to_dict(),
                "verdict": "MAYBE",
                "defects": [],
                "model": result.model,
                "timings_ms": result.timings_ms,
            }
        )


def header_json(**overrides: object) -> bytes:
    return json.dumps({**json.loads(header().to_bytes()), **overrides}).encode()


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        # Deep nesting and giant integers once escaped the parser as RecursionError / ValueError.
        (b'{"v":1,"x":' + b"[" * 3000 + b"]" * 3000 + b"}", "header_too_large"),
        (b'{"v":1,"x":' + b"[" * 1500 + b"]" * 1500 + b"}", "unknown_field"),
        (b"[" * 4000, "bad_json"),
        (b'{"v":1,"seq":' + b"9" * 4000 + b"}", "bad_field"),
        (header_json(seq=2**63), "bad_field"),
        (header_json(t_capture_ns=2**64), "bad_field"),
        (header_json(seq=-1), "bad_field"),
        (header_json(camera_id=""), "bad_field"),
        (header_json(camera_id="cam\n1"), "bad_field"),
        (header_json(station="x" * 129), "bad_field"),
        (header_json(part_id="\x00"), "bad_field"),
        (header_json(width=16385), "bad_field"),
        (b'{"v":1,"seq":NaN}', "bad_json"),
        (header_json(seq=7.5), "bad_field"),
        (b"\xff\xfe{}", "bad_json"),
        (b"", "bad_json"),
    ],
)
def test_hostile_headers_are_refused_by_range_and_size(raw: bytes, reason: str) -> None:
    with pytest.raises(ContractError) as info:
        parse_header(raw)
    assert info.value.reason == reason
    assert str(info.value)


def test_ids_in_any_script_and_the_largest_counters_are_accepted() -> None:
    parsed = parse_header(header_json(camera_id="検査ステーション-3", seq=2**63 - 1, t_capture_ns=2**63 - 1))
    assert parsed.camera_id == "検査ステーション-3" and parsed.seq == 2**63 - 1
