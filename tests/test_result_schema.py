"""The MES payload's JSON Schema (docs/schemas/) is true to the result contract and to what a real
inspector delivers."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pytest
from jsonschema import Draft202012Validator, ValidationError

from edge_inspect.bus.contracts import Defect, FrameHeader, InspectionResult, ModelRef, StageTimings
from edge_inspect.bus.transport import FrameSender
from edge_inspect.inspector.service import Inspector
from tests.helpers import ROOT, MesReceiver, loopback_config, wait_until

SCHEMA = json.loads((ROOT / "docs" / "schemas" / "inspection-result.v1.schema.json").read_text())


def test_the_schema_is_valid_and_names_exactly_the_contracts_fields() -> None:
    Draft202012Validator.check_schema(SCHEMA)
    assert set(SCHEMA["properties"]) == {f.name for f in dataclasses.fields(InspectionResult)}
    nested = {"defects": Defect, "model": ModelRef, "timings_ms": StageTimings}
    for key, contract in nested.items():
        node = SCHEMA["properties"][key]
        properties = (node.get("items") or node)["properties"]
        assert set(properties) == {f.name for f in dataclasses.fields(contract)}, key


def test_every_result_a_real_inspector_delivers_validates(toy_map_model_dir: Path, tmp_path: Path) -> None:
    mes = MesReceiver()
    config = loopback_config(tmp_path, {"model.package": toy_map_model_dir, "mes.url": mes.url})
    try:
        with Inspector(config) as inspector, FrameSender(inspector.receiver.endpoint) as sender:
            for seq, level in enumerate((10, 250, 120, 128, 240)):  # OK, NG with regions, REVIEW near 0.5
                image = np.full((32, 32), level, np.uint8)
                sender.send(
                    FrameHeader("cam-s", seq, "st-1", time.time_ns(), 32, 32, 1, part_id=f"p{seq}"), image
                )
            wait_until(lambda: len(mes.bodies) == 5, 30, "five deliveries")
    finally:
        mes.close()
    validator = Draft202012Validator(SCHEMA)
    for body in mes.bodies.values():
        validator.validate(body)
    assert {body["verdict"] for body in mes.bodies.values()} >= {"OK", "NG"}


def test_a_payload_that_breaks_the_contract_fails_validation() -> None:
    result = InspectionResult(
        "cam1",
        3,
        None,
        "st1",
        42,
        "NG",
        0.9,
        0.5,
        [Defect("crack", 0.9, (1, 2, 3, 4), 12)],
        ModelRef("m", "1", "abc"),
        StageTimings(total=5.0),
    )
    payload = json.loads(result.to_json())
    Draft202012Validator(SCHEMA).validate(payload)
    for broken in ({**payload, "verdict": "MAYBE"}, {**payload, "extra": 1}, {**payload, "seq": -1}):
        with pytest.raises(ValidationError):
            Draft202012Validator(SCHEMA).validate(broken)
