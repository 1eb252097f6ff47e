"""Shift reports: the records of one shift summed up per line and per camera, and pushed to the enterprise
quality system.

`shift_window` turns a shift of the calendar (`[shifts]` of the inspector config) and a date into the
half-open capture-time interval [start, end); `build_report` is pure: results in, a JSON-ready dict out.
Per scope (the line, each camera):

- `inspected`, `verdicts` (OK/NG/REVIEW), `yield` = OK / inspected, `review_rate` = REVIEW / inspected;
- `parts`: parts (by part_id; a result without one is a part of its own) first inspected in this shift,
  `first_pass_ok`: those whose first result on every camera that saw them was OK, `first_pass_yield`;
  parts already inspected before the shift (`reinspected_parts`) had their first pass then;
- `defect_classes`: per class, the NG results with a defect of it; `top_defects`: the five commonest;
- `models` (name, version, sha256: results judged by each), `rules` (the deciding rule: results),
  `recipes` (recipe sha256: results).

Rates of a scope with nothing inspected are null, not 0: no parts is not a bad yield.
`push_report` POSTs a report with the MES webhook's settings and retries until it is taken (at least
once: the receiver deduplicates on `Idempotency-Key: shift-report:<line>:<date>:<shift>`).
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import random
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from edge_inspect.bus.contracts import VERDICTS, InspectionResult
from edge_inspect.inspector.config import MesConfig, ShiftsConfig
from edge_inspect.sinks.mes_webhook import (
    HttpReply,
    MesClient,
    Post,
    WebhookConfig,
    build_request,
    classify_status,
    next_backoff,
)
from edge_inspect.sinks.record_store import OutboxItem, RecordStore

REPORT_VERSION = 1
TOP_DEFECTS = 5
# Every result of a shift: the store's query wants a limit, a shift never comes near this.
ALL = 2**62


@dataclass(frozen=True)
class ShiftWindow:
    shift: str
    date: dt.date
    timezone: str
    start: dt.datetime
    end: dt.datetime

    @property
    def start_ns(self) -> int:
        return _epoch_ns(self.start)

    @property
    def end_ns(self) -> int:
        return _epoch_ns(self.end)


def _epoch_ns(moment: dt.datetime) -> int:
    return (moment - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)) // dt.timedelta(microseconds=1) * 1000


def shift_window(shifts: ShiftsConfig, name: str, date: dt.date) -> ShiftWindow:
    """The shift `name` that starts on `date`; ValueError naming the known shifts when there is none."""
    times = shifts.calendar.get(name)
    if times is None:
        known = ", ".join(shifts.calendar) or "none: add [shifts] calendar to the config"
        raise ValueError(f"no shift {name!r} in the shift calendar; known shifts: {known}")
    zone = ZoneInfo(shifts.timezone)
    start = dt.datetime.combine(date, times.start, tzinfo=zone)
    end_date = date if times.end > times.start else date + dt.timedelta(days=1)
    return ShiftWindow(
        name, date, shifts.timezone, start, dt.datetime.combine(end_date, times.end, tzinfo=zone)
    )


class _Tally:
    """The counts of one scope (the line or one camera)."""

    def __init__(self) -> None:
        self.verdicts: Counter[str] = Counter(dict.fromkeys(VERDICTS, 0))
        self.defect_classes: Counter[str] = Counter()
        self.models: Counter[tuple[str, str, str]] = Counter()
        self.rules: Counter[str] = Counter()
        self.recipes: Counter[str] = Counter()
        # (part, camera) → the verdict of the part's first result on that camera in this shift.
        self.first: dict[tuple[str, str], str] = {}

    def add(self, result: InspectionResult) -> None:
        self.verdicts[result.verdict] += 1
        if result.verdict == "NG":
            self.defect_classes.update({defect.cls for defect in result.defects})
        self.models[(result.model.name, result.model.version, result.model.sha256)] += 1
        self.rules[result.rule or "(not recorded)"] += 1
        self.recipes[result.recipe or "(config rules)"] += 1
        self.first.setdefault((part_of(result), result.camera_id), result.verdict)

    def summary(self, seen_before: Collection[str]) -> dict[str, Any]:
        inspected = sum(self.verdicts.values())
        parts: dict[str, bool] = {}
        for (part, _camera), verdict in self.first.items():
            parts[part] = parts.get(part, True) and verdict == "OK"
        first = {part: ok for part, ok in parts.items() if part not in seen_before}
        first_ok = sum(first.values())
        return {
            "inspected": inspected,
            "verdicts": dict(self.verdicts),
            "yield": _ratio(self.verdicts["OK"], inspected),
            "review_rate": _ratio(self.verdicts["REVIEW"], inspected),
            "parts": len(first),
            "first_pass_ok": first_ok,
            "first_pass_yield": _ratio(first_ok, len(first)),
            "reinspected_parts": len(parts) - len(first),
            "defect_classes": dict(sorted(self.defect_classes.items())),
            "top_defects": [{"cls": c, "count": n} for c, n in _commonest(self.defect_classes, TOP_DEFECTS)],
            "models": [
                {"name": name, "version": version, "sha256": sha, "results": n}
                for (name, version, sha), n in sorted(self.models.items())
            ],
            "rules": dict(sorted(self.rules.items())),
            "recipes": dict(sorted(self.recipes.items())),
        }


def part_of(result: InspectionResult) -> str:
    """The part a result belongs to: its part_id, or the result itself when the line gave no part id."""
    return result.part_id if result.part_id is not None else f"result:{result.result_id}"


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _commonest(counts: Counter[str], n: int) -> list[tuple[str, int]]:
    # Ties by name, so that the same records always give the same report.
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:n]


def build_report(
    results: Iterable[InspectionResult], window: ShiftWindow, line: str, seen_before: Collection[str] = ()
) -> dict[str, Any]:
    """The report of `results` (those captured in `window`; others are ignored). `seen_before`: the
    part ids among them that were inspected before the window (their first pass was then)."""
    start_ns, end_ns = window.start_ns, window.end_ns
    chosen = sorted(
        (r for r in results if start_ns <= r.t_capture_ns < end_ns), key=lambda r: (r.t_capture_ns, r.seq)
    )
    total, cameras = _Tally(), {}
    for result in chosen:
        total.add(result)
        cameras.setdefault(result.camera_id, _Tally()).add(result)
    return {
        "report": "shift",
        "v": REPORT_VERSION,
        "line": line,
        "shift": window.shift,
        "date": window.date.isoformat(),
        "timezone": window.timezone,
        "start": window.start.isoformat(),
        "end": window.end.isoformat(),
        "totals": total.summary(seen_before),
        "cameras": {camera: cameras[camera].summary(seen_before) for camera in sorted(cameras)},
    }


def report_from_store(store: RecordStore, window: ShiftWindow, line: str) -> dict[str, Any]:
    """The report of `window` from the record store."""
    results = store.query(since_ns=window.start_ns, until_ns=window.end_ns, limit=ALL)
    parts = {r.part_id for r in results if r.part_id is not None}
    # A part inspected before the shift had its first pass then (one indexed look-up per part).
    seen_before = {p for p in parts if store.query(part_id=p, until_ns=window.start_ns, limit=1)}
    return build_report(results, window, line, seen_before)


def windows_ending_between(shifts: ShiftsConfig, after_ns: int, until_ns: int) -> list[ShiftWindow]:
    """Every shift of the calendar that ended in (after_ns, until_ns], in order of their ends."""
    zone = ZoneInfo(shifts.timezone)
    first = dt.datetime.fromtimestamp(after_ns / 1e9, zone).date() - dt.timedelta(days=1)
    last = dt.datetime.fromtimestamp(until_ns / 1e9, zone).date()
    windows = [
        shift_window(shifts, name, first + dt.timedelta(days=offset))
        for offset in range((last - first).days + 1)
        for name in shifts.calendar
    ]
    return sorted((w for w in windows if after_ns < w.end_ns <= until_ns), key=lambda w: w.end_ns)


def report_key(report: dict[str, Any]) -> str:
    return f"shift-report:{report['line']}:{report['date']}:{report['shift']}"


def webhook_for_reports(mes: MesConfig, url: str) -> WebhookConfig:
    """[mes]'s TLS, token, signature and retry settings, aimed at the report URL."""
    return WebhookConfig.from_mes(mes.model_copy(update={"url": url}))


def push_report(
    report: dict[str, Any],
    config: WebhookConfig,
    post: Post | None = None,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
) -> HttpReply:
    """POST the report to `config.url` until it is taken (2xx), backing off between attempts as the MES
    deliverer does, at most `config.max_attempts` times; RuntimeError when it was refused for good (a
    3xx/4xx answer) or never taken."""
    body = json.dumps(report, separators=(",", ":")).encode()
    item = OutboxItem(0, report_key(report), body.decode(), 0, 0, "pending", None, None)
    rng = rng or random.Random()
    client = MesClient(config) if post is None else None
    send: Post = client.post if client is not None else post  # type: ignore[assignment]
    try:
        for attempt in range(1, config.max_attempts + 1):
            _, headers = build_request(config, item, int(time.time()))
            try:
                reply = send(config.url, body, headers, config.read_timeout_s)
            except (OSError, http.client.HTTPException) as exc:  # no answer: try again later
                reply = HttpReply(0, f"no answer: {exc}")
            outcome = classify_status(reply.status) if reply.status else "retry"
            if outcome == "delivered":
                return reply
            if outcome == "dead":
                raise RuntimeError(f"{config.url} refused the report: HTTP {reply.status} {reply.detail}")
            if attempt < config.max_attempts:
                sleep(next_backoff(attempt, config.initial_backoff_s, config.max_backoff_s, rng))
        raise RuntimeError(f"{config.url} did not take the report in {config.max_attempts} attempts: {reply}")
    finally:
        if client is not None:
            client.close()
