"""benchmarks/overload.py: its pure rules as unit tests, and its smoke mode end to end (real inspector and
camera processes, toy model, tiny frames). The smoke run asserts the accounting, never timings: on a shared
2-core machine the cameras may not even reach 3x the rate they measured."""

from __future__ import annotations

import pytest

from benchmarks.overload import latency_by_second, recovery_seconds
from tests.helpers import run_benchmark


def test_latency_is_binned_by_capture_second_as_medians() -> None:
    points = [(0.1, 50.0), (0.5, 70.0), (0.9, 60.0), (2.2, 10.0)]
    assert latency_by_second(points) == [(0.0, 60.0), (2.0, 10.0)]


def test_recovery_is_the_first_second_from_which_every_second_stays_within_the_limit() -> None:
    assert recovery_seconds([(0, 90.0), (1, 40.0), (2, 20.0), (3, 21.0)], limit_ms=30) == 2
    # A single fast second among slow ones is not a recovery.
    assert recovery_seconds([(0, 90.0), (1, 20.0), (2, 50.0), (3, 20.0)], limit_ms=30) == 3
    assert recovery_seconds([(0, 20.0), (1, 20.0)], limit_ms=30) == 0
    assert recovery_seconds([(0, 20.0), (1, 90.0)], limit_ms=30) is None
    assert recovery_seconds([], limit_ms=30) is None


@pytest.mark.slow
def test_smoke_overload_accounts_for_every_frame() -> None:
    result = run_benchmark("benchmarks.overload", "--smoke", timeout=300)
    checks = result["checks"]
    assert checks["all_frames_accounted"], result["per_camera"]
    assert checks["lossless_never_dropped_by_inspector"], result["per_camera"]
    assert checks["lossless_inspected_all_but_abandoned_at_stop"], result["per_camera"]
    assert checks["latest_never_waited"], result["per_camera"]
    assert result["sustainable_fps"] > 0
    rows = result["per_camera"]
    assert {row["delivery"] for row in rows} == {"lossless", "latest"}
    for row in rows:
        inspector_dropped = row["superseded"] + row["memory_budget"]
        assert row["captured"] == row["camera_dropped"] + row["received"]
        assert row["received"] == row["inspected"] + inspector_dropped
        # The inspector sees the camera's drops again as gaps in its sequence numbers (not the last ones).
        assert row["seq_gap"] <= row["camera_dropped"]
    summary = result["inspector_summary"]
    assert summary["malformed"] == 0
    assert set(summary["dropped_by_reason"]) <= {"superseded", "memory_budget", "seq_gap"}
    assert result["rss_mib"]["ceiling"] > result["rss_mib"]["model_after_warmup"] > 0
