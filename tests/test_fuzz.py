"""30,000 generated and mutated frame messages through a real inspector process (receive → judge →
record store → MES outbox → a real HTTP receiver): alive at the end, every message accounted for once,
every untouched frame recorded and delivered. The longer campaign is `benchmarks/fuzz_campaign.py`."""

from __future__ import annotations

import pytest

from tests.helpers import run_benchmark

pytestmark = pytest.mark.slow


@pytest.mark.timeout(900)
def test_thirty_thousand_hostile_messages_are_all_accounted_for() -> None:
    report = run_benchmark("benchmarks.fuzz_campaign", "--messages", "30000", "--seed", "1", timeout=850)
    assert report["alive_at_end"] and report["exit_code"] == 0
    assert report["accounted"] == report["messages"] == 30_000
    assert report["invalid_counted"]
    assert report["sent_by_kind"]["valid"] > 2_000
    assert report["valid_recorded_and_delivered"] == report["sent_by_kind"]["valid"]
    assert report["records_equal_deliveries"]
    assert report["inspected"] == report["records"]
    # Every reason the generator provokes shows up under its own name.
    assert {
        "bad_json",
        "bad_field",
        "unknown_field",
        "unknown_schema",
        "bad_parts",
        "header_too_large",
    } <= set(report["malformed_by_reason"])
