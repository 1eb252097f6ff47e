"""A durable tail of the record store: each plant output (MQTT, OPC UA) follows the `results` table.

Why a tail and not a hook in the record stage: the record store is already the durable, ordered log of
every result (the record stage commits each result before it is published or acknowledged to the camera),
so an output that reads it after a persisted cursor needs no change to the pipeline, survives restarts
of the inspector and of its peer, and can never see a result that was not recorded.

Order and completeness. `results` has SQLite's implicit `rowid`. The record store has one writer at a
time (`BEGIN IMMEDIATE`), and a row's rowid is assigned inside that write transaction, so rowids become
visible in increasing order and a reader that has seen rowid N has seen every committed row below it:
"every row with rowid > cursor, by rowid" is exactly "every result recorded since the cursor".

Delivery. An output publishes the rows after its cursor and advances the cursor only after its peer
acknowledged them (`CursorStore.save`): at least once; a crash between acknowledgement and save repeats
those rows, never skips one. Consumers deduplicate by `result_id`.

Retention (sinks/retention.py) deletes only old rows, so the cursor stays valid. Only when it deletes
the newest row too (the line idle for longer than `records_max_age_days`) can SQLite hand out rowids
at or below a cursor again; `ResultTail` notices (the highest rowid is below its cursor) and starts over
from the beginning: repeats, which consumers drop by result id, instead of silently skipped results.

Threading: like `RecordStore`, a `ResultTail` and a `CursorStore` belong to the thread that opened them.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_inspect.logs import log_event
from edge_inspect.sinks.record_store import RecordStore

log = logging.getLogger(__name__)

_CURSOR_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS cursors (output TEXT PRIMARY KEY, last_rowid INTEGER NOT NULL,"
    " last_result_id TEXT, updated_ns INTEGER NOT NULL)"
)


@dataclass(frozen=True)
class TailItem:
    """One recorded result: its rowid (the tail's position), the JSON exactly as recorded, and parsed."""

    rowid: int
    payload: str
    result: dict[str, Any]

    @property
    def result_id(self) -> str:
        return str(self.result["result_id"])


def read_after(conn: sqlite3.Connection, cursor: int, limit: int) -> list[TailItem]:
    """The next `limit` results after `cursor`, in record order."""
    rows = conn.execute(
        "SELECT rowid, result_json FROM results WHERE rowid > ? ORDER BY rowid LIMIT ?", (cursor, limit)
    ).fetchall()
    return [TailItem(int(rowid), payload, json.loads(payload)) for rowid, payload in rows]


def count_after(conn: sqlite3.Connection, cursor: int) -> int:
    """How many results are recorded after `cursor` (an output's lag); a rowid range, so an index seek."""
    return int(conn.execute("SELECT COUNT(*) FROM results WHERE rowid > ?", (cursor,)).fetchone()[0])


def open_state_db(path: Path) -> sqlite3.Connection:
    """An output's own state file (WAL, autocommit; write transactions are explicit)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=10.0, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


class CursorStore:
    """The persisted cursors of the outputs, one row per output, in a state file of their own (not in the
    record store, whose schema check refuses foreign tables). `conn` lets an output save its own state
    (OPC UA counters) in the same transaction as its cursor."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.conn = open_state_db(self.path)
        self.conn.execute(_CURSOR_SCHEMA)

    def load(self, output: str) -> int:
        row = self.conn.execute("SELECT last_rowid FROM cursors WHERE output = ?", (output,)).fetchone()
        return 0 if row is None else int(row[0])

    def save(self, output: str, rowid: int, result_id: str | None) -> None:
        """Upsert; call inside a transaction of `conn` to make it atomic with other state, or alone."""
        self.conn.execute(
            "INSERT INTO cursors (output, last_rowid, last_result_id, updated_ns) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (output) DO UPDATE SET last_rowid = excluded.last_rowid,"
            " last_result_id = excluded.last_result_id, updated_ns = excluded.updated_ns",
            (output, rowid, result_id, time.time_ns()),
        )

    def close(self) -> None:
        self.conn.close()


class ResultTail:
    """Reads the record store after one output's cursor. `position` runs ahead of the saved cursor while
    items are in flight; `commit` persists the cursor up to an acknowledged item."""

    def __init__(self, db_path: Path, state_path: Path, output: str) -> None:
        # Opening a RecordStore once creates the schema if the inspector has not yet, so the tail can
        # start first; reads then go through a plain connection of this thread.
        RecordStore(db_path).close()
        self.output = output
        self._conn = sqlite3.connect(db_path, timeout=10.0, isolation_level=None)
        self.cursors = CursorStore(state_path)
        self.cursor = self.cursors.load(output)
        self.position = self.cursor

    def next_batch(self, limit: int) -> list[TailItem]:
        """Results after `position` (the next ones not yet handed out), and moves `position` past them."""
        self._restart_if_rowids_reused()
        items = read_after(self._conn, self.position, limit)
        if items:
            self.position = items[-1].rowid
        return items

    def rewind(self) -> None:
        """Hand out again everything after the saved cursor (the peer lost what was in flight)."""
        self.position = self.cursor

    def commit(self, item: TailItem) -> None:
        """Persist the cursor at `item`: everything up to it is acknowledged by the peer."""
        self.cursors.save(self.output, item.rowid, item.result_id)
        self.cursor = item.rowid

    def lag(self) -> int:
        """Results recorded and not yet acknowledged by the peer."""
        return count_after(self._conn, self.cursor)

    def cameras(self) -> list[tuple[str, str, int]]:
        """(station, camera_id, newest capture ns) of every camera in the store, so that statuses are
        known from the start; grouped by camera through its (camera_id, t_capture_ns) index."""
        rows = self._conn.execute(
            "SELECT station, camera_id, MAX(t_capture_ns) FROM results GROUP BY camera_id"
        ).fetchall()
        return [(str(station), str(camera), int(t_ns)) for station, camera, t_ns in rows]

    def close(self) -> None:
        self._conn.close()
        self.cursors.close()

    def _restart_if_rowids_reused(self) -> None:
        top = self._conn.execute("SELECT MAX(rowid) FROM results").fetchone()[0] or 0
        if top < self.cursor:
            log_event(
                log,
                logging.WARNING,
                "output_cursor_reset",
                output=self.output,
                cursor=self.cursor,
                highest_rowid=top,
                why="the newest results were deleted (retention), so rowids restart; republishing all",
            )
            self.cursor = self.position = 0
            self.cursors.save(self.output, 0, None)


class CameraWatch:
    """Online/offline per camera from the result stream: online while a result was captured within
    `timeout_s`. `seen`/`expire` return the cameras whose state changed (to publish)."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_ns = int(timeout_s * 1e9)
        self.last_ns: dict[tuple[str, str], int] = {}
        self.online: dict[tuple[str, str], bool] = {}

    def seen(self, station: str, camera: str, t_capture_ns: int, now_ns: int) -> bool:
        key = (station, camera)
        self.last_ns[key] = max(self.last_ns.get(key, 0), t_capture_ns)
        return self._update(key, now_ns)

    def expire(self, now_ns: int) -> list[tuple[str, str]]:
        return [key for key in list(self.last_ns) if self._update(key, now_ns)]

    def _update(self, key: tuple[str, str], now_ns: int) -> bool:
        online = now_ns - self.last_ns[key] < self.timeout_ns
        changed = self.online.get(key) != online
        self.online[key] = online
        return changed


def escape_id(text: str, reserved: str) -> str:
    """`text` with `%`, the `reserved` characters and control characters percent-encoded (UTF-8), so that
    an id can be one level of a topic or node path whatever it contains, and distinct ids stay distinct."""
    special = set(reserved) | {"%"}
    out = []
    for char in text:
        if char in special or ord(char) < 0x20 or 0x7F <= ord(char) <= 0x9F:
            out.extend(f"%{byte:02X}" for byte in char.encode())
        else:
            out.append(char)
    return "".join(out) or "%00"  # an empty level would merge into its neighbours
