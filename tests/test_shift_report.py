"""Shift reports: the shift calendar, a report that matches the records exactly, and pushing it."""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import replace as dataclasses_replace
from pathlib import Path

import pytest

from edge_inspect.bus.contracts import Defect, InspectionResult, ModelRef, StageTimings
from edge_inspect.cli import main
from edge_inspect.inspector.config import ShiftsConfig
from edge_inspect.sinks.mes_webhook import HttpReply, WebhookConfig
from edge_inspect.sinks.record_store import RecordStore
from edge_inspect.sinks.shift_report import build_report, push_report, shift_window

CALENDAR = {
    "early": {"start": "06:00", "end": "14:00"},
    "late": {"start": "14:00", "end": "22:00"},
    "night": {"start": "22:00", "end": "06:00"},
}
SHIFTS = ShiftsConfig(timezone="Europe/Berlin", line="line-3", calendar=CALENDAR)
BERLIN = dt.timezone(dt.timedelta(hours=2))  # 2024-05-02 is in summer time
DAY = dt.date(2024, 5, 2)
V1, V2 = ModelRef("cells", "1", "aa"), ModelRef("cells", "2", "bb")


def result(
    seq: int, camera: str, part: str | None, verdict: str, hhmm: str, *classes: str
) -> InspectionResult:
    when = dt.datetime.combine(DAY, dt.time.fromisoformat(hhmm), tzinfo=BERLIN)
    return InspectionResult(
        camera_id=camera,
        seq=seq,
        part_id=part,
        station="st",
        t_capture_ns=int(when.timestamp()) * 10**9,
        verdict=verdict,
        score=0.9 if verdict == "NG" else 0.1,
        threshold=0.5,
        defects=[Defect(c, 0.9) for c in classes],
        model=V1 if hhmm < "14:00" else V2,
        timings_ms=StageTimings(),
        rule={"OK": "score<threshold", "NG": "score>=threshold", "REVIEW": "review_band"}[verdict],
        recipe="r1",
    )


RECORDS = [
    # early shift
    result(1, "cam-1", "p1", "NG", "07:00", "crack"),
    result(2, "cam-1", "p2", "OK", "08:00"),
    result(3, "cam-2", "p3", "REVIEW", "09:00"),
    result(4, "cam-2", "p4", "NG", "13:59", "scratch", "crack"),
    # late shift
    result(5, "cam-1", "p1", "OK", "14:00"),  # p1 again: its first pass was NG, in the early shift
    result(6, "cam-1", "p5", "NG", "15:00", "crack"),
    result(7, "cam-1", "p5", "OK", "15:30"),  # inspected twice in this shift: first NG, then OK
    result(8, "cam-2", "p6", "OK", "16:00"),
    result(9, "cam-2", None, "NG", "21:59", "scratch"),  # no part id: a part of its own
    # night shift
    result(10, "cam-1", "p7", "OK", "22:00"),
]


def test_shift_windows_follow_the_calendar_and_its_time_zone() -> None:
    late = shift_window(SHIFTS, "late", DAY)
    assert (late.start.isoformat(), late.end.isoformat()) == (
        "2024-05-02T14:00:00+02:00",
        "2024-05-02T22:00:00+02:00",
    )
    night = shift_window(SHIFTS, "night", DAY)
    assert night.end.isoformat() == "2024-05-03T06:00:00+02:00"
    # The night the clocks went forward is an hour short.
    spring = shift_window(SHIFTS, "night", dt.date(2024, 3, 30))
    assert (spring.end_ns - spring.start_ns) // 10**9 == 7 * 3600
    with pytest.raises(ValueError, match=r"no shift 'noon'.*known shifts: early, late, night"):
        shift_window(SHIFTS, "noon", DAY)


def stats(
    ok: int,
    ng: int,
    review: int,
    parts: int,
    fp_ok: int,
    reinspected: int,
    classes: dict[str, int],
    v1: int,
    v2: int,
) -> dict:
    inspected = ok + ng + review
    rules = {"score<threshold": ok, "score>=threshold": ng, "review_band": review}
    return {
        "inspected": inspected,
        "verdicts": {"OK": ok, "NG": ng, "REVIEW": review},
        "yield": ok / inspected,
        "review_rate": review / inspected,
        "parts": parts,
        "first_pass_ok": fp_ok,
        "first_pass_yield": fp_ok / parts,
        "reinspected_parts": reinspected,
        "defect_classes": dict(sorted(classes.items())),
        "top_defects": [
            {"cls": c, "count": n} for c, n in sorted(classes.items(), key=lambda i: (-i[1], i[0]))
        ],
        "models": [
            {"name": m.name, "version": m.version, "sha256": m.sha256, "results": n}
            for m, n in ((V1, v1), (V2, v2))
            if n
        ],
        "rules": dict(sorted((k, v) for k, v in rules.items() if v)),
        "recipes": {"r1": inspected},
    }


def test_the_report_matches_the_records(tmp_path: Path) -> None:
    late = build_report(RECORDS, shift_window(SHIFTS, "late", DAY), "line-3", seen_before={"p1"})
    assert late["totals"] == stats(
        3, 2, 0, parts=3, fp_ok=1, reinspected=1, classes={"crack": 1, "scratch": 1}, v1=0, v2=5
    )
    assert late["cameras"] == {
        "cam-1": stats(2, 1, 0, parts=1, fp_ok=0, reinspected=1, classes={"crack": 1}, v1=0, v2=3),
        "cam-2": stats(1, 1, 0, parts=2, fp_ok=1, reinspected=0, classes={"scratch": 1}, v1=0, v2=2),
    }
    assert (late["line"], late["shift"], late["date"]) == ("line-3", "late", "2024-05-02")
    early = build_report(RECORDS, shift_window(SHIFTS, "early", DAY), "line-3")
    assert early["totals"] == stats(
        1, 2, 1, parts=4, fp_ok=1, reinspected=0, classes={"crack": 2, "scratch": 1}, v1=4, v2=0
    )
    empty = build_report([], shift_window(SHIFTS, "early", DAY), "line-3")["totals"]
    assert (empty["yield"], empty["first_pass_yield"], empty["review_rate"]) == (None, None, None)


def test_the_report_command_reads_the_store_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    db = tmp_path / "records.sqlite"
    with RecordStore(db) as store:
        store.add_results(RECORDS, with_outbox=False)
    config = tmp_path / "line.toml"
    lines = [
        '[model]\npackage = "m"\n[shifts]\ntimezone = "Europe/Berlin"\nline = "line-3"\n[shifts.calendar]'
    ]
    lines += [f'{name} = {{ start = "{t["start"]}", end = "{t["end"]}" }}' for name, t in CALENDAR.items()]
    config.write_text("\n".join(lines) + "\n")
    out = tmp_path / "late.json"
    args = ["report", "--db", str(db), "--config", str(config), "--shift", "late", "--date", "2024-05-02"]
    assert main([*args, "--json", str(out)]) == 0
    written = json.loads(out.read_text())
    # The store knows p1 was inspected in the early shift: the same report as from the records.
    assert written == build_report(RECORDS, shift_window(SHIFTS, "late", DAY), "line-3", seen_before={"p1"})
    printed = capsys.readouterr().out
    assert (
        "line: 5 inspected (OK 3, NG 2, REVIEW 0)  yield 60.0%  first-pass yield 33.3% of 3 parts" in printed
    )
    assert (
        main(["report", "--db", str(db), "--config", str(config), "--shift", "noon", "--date", "2024-05-02"])
        == 2
    )


def test_push_retries_until_the_report_is_taken() -> None:
    report = build_report(RECORDS, shift_window(SHIFTS, "late", DAY), "line-3")
    replies = [HttpReply(503, "busy"), HttpReply(200)]
    posts: list[tuple[str, bytes, dict]] = []
    waits: list[float] = []

    def post(url: str, body: bytes, headers: dict, timeout_s: float) -> HttpReply:
        if not posts:
            posts.append((url, body, dict(headers)))
            raise OSError("connection refused")
        posts.append((url, body, dict(headers)))
        return replies.pop(0)

    config = WebhookConfig(url="https://quality.example/shift-reports", token="t0ken")
    assert push_report(report, config, post, waits.append).status == 200
    assert len(posts) == 3 and len(waits) == 2
    url, body, headers = posts[-1]
    assert url == config.url
    assert json.loads(body) == report
    assert headers["Idempotency-Key"] == "shift-report:line-3:2024-05-02:late"
    assert headers["Authorization"] == "Bearer t0ken"
    with pytest.raises(RuntimeError, match="refused the report: HTTP 400"):
        push_report(report, config, lambda *a: HttpReply(400, "bad"), waits.append)


def test_the_inspector_pushes_each_shift_report_at_shift_end_at_least_once(tmp_path: Path) -> None:
    """A shift that ends while the inspector runs is reported from the records and pushed, through an MES
    that refuses the first two attempts; a restart does not push it again."""
    from edge_inspect.inspector.shift_reporter import ShiftReporter
    from tests.helpers import MesReceiver, loopback_config, wait_until
    from tests.toy_models import make_toy_package

    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    start, end = now - dt.timedelta(minutes=5), now + dt.timedelta(seconds=2)
    receiver = MesReceiver(fail_first=2)
    config = loopback_config(
        tmp_path,
        {
            "model.package": make_toy_package(tmp_path / "model"),
            "shifts.calendar": {"now": {"start": start.time().isoformat(), "end": end.time().isoformat()}},
            "shifts.report_url": receiver.url,
            "mes.initial_backoff_s": 0.1,
            "mes.max_backoff_s": 0.2,
        },
    )
    in_shift = [
        dataclasses_replace(
            RECORDS[i], t_capture_ns=int((now - dt.timedelta(minutes=1)).timestamp()) * 10**9 + i
        )
        for i in range(4)
    ]
    with RecordStore(config.db_path) as store:
        store.add_results(in_shift, with_outbox=False)
    reporter = ShiftReporter(config, poll_s=0.1, grace_s=0.5)
    try:
        reporter.start()
        wait_until(lambda: len(receiver.keys) == 1, 20, "the report pushed after shift end")
    finally:
        reporter.stop()
    key = receiver.keys[0]
    assert key == f"shift-report:line-1:{start.date().isoformat()}:now" and receiver.refused == 2
    report = receiver.bodies[key]
    assert report["totals"]["inspected"] == 4
    assert report["totals"]["verdicts"] == {"OK": 1, "NG": 2, "REVIEW": 1}
    again = ShiftReporter(config, poll_s=0.1, grace_s=0.5)
    again.start()
    time.sleep(1.0)
    again.stop()
    receiver.close()
    assert receiver.keys == [key]
    with RecordStore(config.db_path) as store:
        assert [k for k, _ in store.shift_reports(unpushed_to="webhook")] == []
        assert [k for k, _ in store.shift_reports(unpushed_to="mqtt")] == [key]
