"""Line alarms over the result stream: windows on capture time, streaks, per camera, rules that change."""

from __future__ import annotations

import logging

import pytest

from edge_inspect.bus.contracts import InspectionResult, ModelRef, StageTimings
from edge_inspect.inspector.alarms import NS_PER_MINUTE, AlarmEvaluator
from edge_inspect.inspector.recipe import AlarmRule
from edge_inspect.sinks.metrics import InspectorMetrics

NG_BURST = AlarmRule(name="ng-burst", kind="window", verdict="NG", count=3, minutes=10)
REVIEW_STREAK = AlarmRule(name="review-streak", kind="consecutive", verdict="REVIEW", count=2)


def result(camera: str, seq: int, verdict: str, minute: float) -> InspectionResult:
    return InspectionResult(
        camera_id=camera,
        seq=seq,
        part_id=f"p{seq}",
        station="st",
        t_capture_ns=int(minute * NS_PER_MINUTE),
        verdict=verdict,
        score=0.9,
        threshold=0.5,
        defects=[],
        model=ModelRef("m", "1", "abc"),
        timings_ms=StageTimings(),
        recipe="cafe",
    )


def test_n_ng_parts_in_m_minutes_on_one_camera(caplog: pytest.LogCaptureFixture) -> None:
    metrics = InspectorMetrics()
    evaluator = AlarmEvaluator(lambda: [NG_BURST], metrics)
    stream = [
        result("cam-1", 0, "NG", 0),
        result("cam-2", 1, "NG", 1),  # another camera: its own window
        result("cam-1", 2, "OK", 2),
        result("cam-1", 3, "NG", 5),
        result("cam-1", 4, "NG", 10),  # minute 0 has left the 10-minute window
        result("cam-1", 5, "NG", 12),
    ]
    with caplog.at_level(logging.WARNING, logger="edge_inspect.inspector.alarms"):
        alarms = [alarm for r in stream for alarm in evaluator.observe(r)]
    assert len(alarms) == 1
    alarm = alarms[0]
    assert (alarm.camera, alarm.rule, alarm.kind, alarm.count) == ("cam-1", "ng-burst", "window", 3)
    assert (alarm.first_result_id, alarm.last_result_id) == (stream[3].result_id, stream[5].result_id)
    assert alarm.id == f"ng-burst:{stream[5].result_id}" and alarm.recipe == "cafe"
    assert [r.fields["rule"] for r in caplog.records if r.getMessage() == "line_alarm"] == ["ng-burst"]
    assert (
        metrics.registry.get_sample_value(
            "edgeinspect_line_alarms_total", {"camera": "cam-1", "rule": "ng-burst"}
        )
        == 1.0
    )
    # After an alarm the window starts empty: three more NG parts are needed for the next one.
    assert evaluator.observe(result("cam-1", 6, "NG", 13)) == []
    assert evaluator.observe(result("cam-1", 7, "NG", 14)) == []
    assert len(evaluator.observe(result("cam-1", 8, "NG", 15))) == 1


def test_k_consecutive_review_parts() -> None:
    evaluator = AlarmEvaluator(lambda: [REVIEW_STREAK])
    verdicts = ["REVIEW", "OK", "REVIEW", "REVIEW", "REVIEW", "REVIEW"]
    fired = [bool(evaluator.observe(result("cam-1", i, v, i))) for i, v in enumerate(verdicts)]
    assert fired == [False, False, False, True, False, True]


def test_a_reloaded_recipe_changes_the_alarms_from_the_next_result() -> None:
    rules = [REVIEW_STREAK]
    evaluator = AlarmEvaluator(lambda: rules)
    assert evaluator.observe(result("cam-1", 0, "REVIEW", 0)) == []
    rules = [AlarmRule(name="review-streak", kind="consecutive", verdict="REVIEW", count=3)]
    # A changed rule starts from nothing: the earlier REVIEW does not count towards it.
    assert evaluator.observe(result("cam-1", 1, "REVIEW", 1)) == []
    assert evaluator.observe(result("cam-1", 2, "REVIEW", 2)) == []
    assert len(evaluator.observe(result("cam-1", 3, "REVIEW", 3))) == 1
    rules = []
    assert evaluator.observe(result("cam-1", 4, "REVIEW", 4)) == []


def test_alarm_rules_are_validated() -> None:
    with pytest.raises(ValueError, match="minutes is needed"):
        AlarmRule(name="x", kind="window", verdict="NG", count=3)
    with pytest.raises(ValueError, match="minutes is needed"):
        AlarmRule(name="x", kind="consecutive", verdict="NG", count=3, minutes=5)
