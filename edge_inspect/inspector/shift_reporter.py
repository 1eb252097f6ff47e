"""Shift reports made and pushed by the inspector itself at each shift's end, at least once.

Every `POLL_S` the reporter looks for shifts of the calendar that ended at least `GRACE_S` ago (results of
the shift's last seconds may still be on their way through the line) and after the last report it made;
it builds each one from the record store (`sinks/shift_report.py`, the same report `edge-inspect report`
prints) and keeps it in the store's `shift_reports` table before anything is sent. Then it POSTs every
report not yet taken to `shifts.report_url` (with [mes]'s TLS, token and signature; one attempt per report
and round, backing off between rounds), and the MQTT output publishes them too (docs/outputs.md). A
report is marked delivered only when the receiver took it, so a restart or an outage only delays it; the
receiver deduplicates by its `Idempotency-Key` (`shift-report:<line>:<date>:<shift>`).

The first time (no report in the store yet) it reports the shifts that ended in the last `BACKFILL_S`
before it started and had results, not the whole history of an old record store.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import sqlite3
import threading
import time

from edge_inspect.inspector.config import InspectorConfig
from edge_inspect.logs import log_event
from edge_inspect.sinks.mes_webhook import next_backoff
from edge_inspect.sinks.record_store import RecordStore
from edge_inspect.sinks.shift_report import (
    push_report,
    report_from_store,
    report_key,
    webhook_for_reports,
    windows_ending_between,
)

log = logging.getLogger(__name__)

POLL_S = 5.0
GRACE_S = 30.0
BACKFILL_S = 24 * 3600.0


class ShiftReporter:
    """One thread; `start()`, then `stop()`. Runs only when the config has a shift calendar."""

    def __init__(self, config: InspectorConfig, poll_s: float = POLL_S, grace_s: float = GRACE_S) -> None:
        self._config = config
        self._poll_s = poll_s
        self._grace_ns = int(grace_s * 1e9)
        self._stop = threading.Event()
        self._failures = 0
        self._next_push = 0.0
        self._rng = random.Random()
        self._thread = threading.Thread(target=self._run, name="edge-inspect-shift-reports", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)

    def _run(self) -> None:
        store = RecordStore(self._config.db_path)
        try:
            after_ns = store.last_shift_end_ns() or int((time.time() - BACKFILL_S) * 1e9)
            while True:
                try:
                    after_ns = self._make_due(store, after_ns, time.time_ns())
                    self._push_due(store)
                except sqlite3.Error as exc:  # tried again next round; the record stage reports the store
                    log_event(log, logging.WARNING, "shift_report_failed", error=repr(exc))
                if self._stop.wait(self._poll_s):
                    return
        finally:
            store.close()

    def _make_due(self, store: RecordStore, after_ns: int, now_ns: int) -> int:
        shifts = self._config.shifts
        for window in windows_ending_between(shifts, after_ns, now_ns - self._grace_ns):
            report = report_from_store(store, window, shifts.line)
            # The backfill skips shifts in which the line did not run; from then on every shift counts.
            if store.last_shift_end_ns() is None and report["totals"]["inspected"] == 0:
                after_ns = window.end_ns
                continue
            if store.add_shift_report(report_key(report), window.end_ns, report, now_ns):
                log_event(
                    log,
                    logging.INFO,
                    "shift_report_made",
                    shift=window.shift,
                    date=window.date.isoformat(),
                    inspected=report["totals"]["inspected"],
                    line_yield=report["totals"]["yield"],
                )
            after_ns = window.end_ns
        return after_ns

    def _push_due(self, store: RecordStore) -> None:
        url = self._config.shifts.report_url
        if url is None or time.monotonic() < self._next_push:
            return
        # One attempt per report and round: the rounds themselves back off.
        webhook = dataclasses.replace(webhook_for_reports(self._config.mes, url), max_attempts=1)
        for key, report in store.shift_reports(unpushed_to="webhook"):
            try:
                push_report(report, webhook)
            except (RuntimeError, ValueError) as exc:
                store.mark_report_pushed(key, "webhook", time.time_ns(), error=str(exc))
                self._failures += 1
                delay = next_backoff(
                    self._failures, webhook.initial_backoff_s, webhook.max_backoff_s, self._rng
                )
                self._next_push = time.monotonic() + delay
                log_event(
                    log,
                    logging.WARNING,
                    "shift_report_push_failed",
                    report=key,
                    error=str(exc),
                    retry_s=delay,
                )
                return
            store.mark_report_pushed(key, "webhook", time.time_ns())
            self._failures = 0
            log_event(log, logging.INFO, "shift_report_pushed", report=key, url=url)
