"""The feed: one thread that follows the record store's results (by rowid, as the plant outputs do:
sinks/result_tail.py) and turns them into tiles, alarms and REVIEW parts for the browsers.

Only reads the record store (WAL readers never block the inspector's writer). Its cursor is saved with
the alarms it raised, so a restarted console misses no NG part and raises none twice. A console started
on a store for the first time begins `history_s` back.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable

from edge_inspect.bus.contracts import InspectionResult
from edge_inspect.console.hub import Hub
from edge_inspect.console.line_watch import ConsoleAlarm, LineWatch, result_summary
from edge_inspect.console.settings import ConsoleSettings
from edge_inspect.console.store import ConsoleStore
from edge_inspect.inspector.recipe import AlarmRule, RecipeHolder
from edge_inspect.logs import log_event
from edge_inspect.sinks.record_store import RecordStore
from edge_inspect.sinks.result_tail import read_after

log = logging.getLogger(__name__)

BATCH = 500
TILES_EVERY_S = 1.0


class LineFeed(threading.Thread):
    """`on_failure(exc)` is called if the feed cannot go on (the console then stops: a console that
    shows a frozen line is worse than none)."""

    def __init__(
        self, settings: ConsoleSettings, hub: Hub, on_failure: Callable[[BaseException], None]
    ) -> None:
        super().__init__(name="console-feed", daemon=True)
        self.settings = settings
        self.hub = hub
        self.stop = threading.Event()
        self.ready = threading.Event()
        self._on_failure = on_failure

    def run(self) -> None:
        try:
            self._follow()
        except Exception as exc:  # reported, and ends the console
            log_event(log, logging.ERROR, "console_feed_failed", error=repr(exc))
            self._on_failure(exc)

    def _follow(self) -> None:
        settings = self.settings
        RecordStore(settings.db_path).close()  # creates the schema when the console starts first
        records = sqlite3.connect(settings.db_path, timeout=10.0, isolation_level=None)
        store = ConsoleStore(settings.state_path)
        try:
            watch = LineWatch(
                self._alarm_rules(),
                settings.camera_timeout_s,
                settings.ng_rate_window,
                settings.ng_rate_limit,
            )
            cursor = store.cursor()
            if cursor is None or cursor > _top_rowid(records):
                cursor = _rowid_before(records, time.time_ns() - int(settings.history_s * 1e9))
            store.add_alarms(_prime(records, watch), cursor)
            self.ready.set()
            last_tiles = 0.0
            while not self.stop.is_set():
                if cursor > _top_rowid(records):  # retention deleted the newest rows: rowids restart
                    cursor = _rowid_before(records, time.time_ns() - int(settings.history_s * 1e9))
                items = read_after(records, cursor, BATCH)
                now_ns = time.time_ns()
                alarms, reviews = [], []
                for item in items:
                    result = InspectionResult.from_dict(item.result)
                    alarms += watch.observe(result, now_ns)
                    if result.verdict == "REVIEW":
                        reviews.append(result_summary(result))
                alarms += watch.expire(now_ns)
                if items:
                    cursor = items[-1].rowid
                new = store.add_alarms(alarms, cursor) if (items or alarms) else []
                for alarm in new:
                    self.hub.publish("alarm", alarm.to_dict() | {"ack": None})
                for review in reviews:
                    self.hub.publish("review", review)
                if items or alarms or time.monotonic() - last_tiles >= TILES_EVERY_S:
                    self.hub.publish(
                        "tiles", {"now_ns": now_ns, "tiles": watch.snapshot(now_ns)}, retain=True
                    )
                    last_tiles = time.monotonic()
                if len(items) < BATCH:
                    self.stop.wait(settings.poll_s)
        finally:
            records.close()
            store.close()

    def _alarm_rules(self) -> Callable[[], list[AlarmRule]]:
        recipe = self.settings.rules.recipe
        if recipe is None:
            return list
        holder = RecipeHolder(recipe, self.settings.rules)
        return lambda: list(holder.current().recipe.alarms)


def _top_rowid(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT MAX(rowid) FROM results").fetchone()[0] or 0)


def _rowid_before(conn: sqlite3.Connection, since_ns: int) -> int:
    """The cursor just before the first result captured at or after `since_ns`."""
    row = conn.execute("SELECT MIN(rowid) FROM results WHERE t_capture_ns >= ?", (since_ns,)).fetchone()
    return int(row[0]) - 1 if row[0] is not None else _top_rowid(conn)


def _prime(conn: sqlite3.Connection, watch: LineWatch) -> list[ConsoleAlarm]:
    """Every camera the store knows, with its newest result and newest archived image."""
    now_ns = time.time_ns()
    alarms: list[ConsoleAlarm] = []
    cameras = [row[0] for row in conn.execute("SELECT camera_id FROM camera_seq ORDER BY camera_id")]
    for camera in cameras:
        last = _newest(conn, camera, "")
        if last is not None:
            alarms += watch.prime(last, _newest(conn, camera, " AND image_path IS NOT NULL"), now_ns)
    return alarms


def _newest(conn: sqlite3.Connection, camera: str, condition: str) -> InspectionResult | None:
    row = conn.execute(
        f"SELECT result_json FROM results WHERE camera_id = ?{condition} ORDER BY t_capture_ns DESC LIMIT 1",
        (camera,),
    ).fetchone()
    return None if row is None else InspectionResult.from_dict(json.loads(row[0]))
