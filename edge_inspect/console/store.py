"""The console's own state, in `console.sqlite` beside the record store (whose schema check refuses
foreign tables): the alarms it raised, who acknowledged them, the audit trail, and the feed's cursor.

Like the record store: WAL, one connection per thread (`ConsoleStore` belongs to the thread that opened
it), explicit write transactions that take the lock up front.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edge_inspect.console.line_watch import ConsoleAlarm
from edge_inspect.sinks.result_tail import open_state_db

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS alarms (
        id TEXT PRIMARY KEY, kind TEXT NOT NULL, camera TEXT NOT NULL, t_ns INTEGER NOT NULL,
        title TEXT NOT NULL, result_id TEXT, detail TEXT NOT NULL, raised_ns INTEGER NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS alarms_time ON alarms (t_ns)",
    """CREATE TABLE IF NOT EXISTS acks (
        alarm_id TEXT PRIMARY KEY REFERENCES alarms (id), acked_by TEXT NOT NULL,
        acked_ns INTEGER NOT NULL, note TEXT)""",
    """CREATE TABLE IF NOT EXISTS audit (
        id INTEGER PRIMARY KEY, t_ns INTEGER NOT NULL, who TEXT NOT NULL, role TEXT NOT NULL,
        action TEXT NOT NULL, target TEXT NOT NULL, detail TEXT NOT NULL)""",
    "CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
)


class ConsoleStore:
    def __init__(self, path: Path) -> None:
        self.conn = open_state_db(path)
        self.conn.execute("PRAGMA foreign_keys = ON")
        with self._write() as conn:
            for statement in _SCHEMA:
                conn.execute(statement)

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
            self.conn.execute("COMMIT")
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> ConsoleStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # The feed's cursor over the record store's results (rowid), saved with the alarms it led to.

    def cursor(self) -> int | None:
        row = self.conn.execute("SELECT value FROM state WHERE key = 'results_rowid'").fetchone()
        return None if row is None else int(row[0])

    def add_alarms(self, alarms: Sequence[ConsoleAlarm], cursor: int) -> list[ConsoleAlarm]:
        """Record alarms and the cursor in one transaction; returns those not recorded before."""
        now = time.time_ns()
        new = []
        with self._write() as conn:
            for alarm in alarms:
                inserted = conn.execute(
                    "INSERT OR IGNORE INTO alarms"
                    " (id, kind, camera, t_ns, title, result_id, detail, raised_ns)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        alarm.id,
                        alarm.kind,
                        alarm.camera,
                        alarm.t_ns,
                        alarm.title,
                        alarm.result_id,
                        json.dumps(alarm.detail),
                        now,
                    ),
                ).rowcount
                if inserted:
                    new.append(alarm)
            conn.execute(
                "INSERT INTO state (key, value) VALUES ('results_rowid', ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (cursor,),
            )
        return new

    def alarms(self, limit: int = 200, unacknowledged_only: bool = False) -> list[dict[str, Any]]:
        """The newest alarms first, each with its acknowledgement (or None)."""
        where = "WHERE k.alarm_id IS NULL" if unacknowledged_only else ""
        rows = self.conn.execute(
            "SELECT a.id, a.kind, a.camera, a.t_ns, a.title, a.result_id, a.detail, k.acked_by, k.acked_ns,"
            f" k.note FROM alarms a LEFT JOIN acks k ON k.alarm_id = a.id {where}"
            " ORDER BY a.t_ns DESC, a.raised_ns DESC LIMIT ?",
            (limit,),
        ).fetchall()
        return [alarm_row(row) for row in rows]

    def count_unacknowledged(self) -> int:
        return int(
            self.conn.execute(
                "SELECT COUNT(*) FROM alarms WHERE id NOT IN (SELECT alarm_id FROM acks)"
            ).fetchone()[0]
        )

    def acknowledge(self, alarm_ids: Sequence[str], who: str, role: str, note: str | None) -> list[str]:
        """Acknowledge the alarms not yet acknowledged (the first acknowledgement stands), audited in
        the same transaction; returns the ids acknowledged now."""
        now = time.time_ns()
        done = []
        with self._write() as conn:
            for alarm_id in alarm_ids:
                if conn.execute("SELECT 1 FROM alarms WHERE id = ?", (alarm_id,)).fetchone() is None:
                    continue
                if conn.execute(
                    "INSERT OR IGNORE INTO acks (alarm_id, acked_by, acked_ns, note) VALUES (?, ?, ?, ?)",
                    (alarm_id, who, now, note),
                ).rowcount:
                    done.append(alarm_id)
            if done:
                self._audit(conn, now, who, role, "acknowledge", ",".join(done), {"note": note})
        return done

    def audit(self, who: str, role: str, action: str, target: str, detail: dict[str, Any]) -> None:
        with self._write() as conn:
            self._audit(conn, time.time_ns(), who, role, action, target, detail)

    def audit_trail(self, limit: int = 200) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT t_ns, who, role, action, target, detail FROM audit ORDER BY id DESC LIMIT ?", (limit,)
        ).fetchall()
        return [
            {"t_ns": t, "who": who, "role": role, "action": action, "target": target, "detail": json.loads(d)}
            for t, who, role, action, target, d in rows
        ]

    @staticmethod
    def _audit(
        conn: sqlite3.Connection,
        now: int,
        who: str,
        role: str,
        action: str,
        target: str,
        detail: dict[str, Any],
    ) -> None:
        conn.execute(
            "INSERT INTO audit (t_ns, who, role, action, target, detail) VALUES (?, ?, ?, ?, ?, ?)",
            (now, who, role, action, target, json.dumps(detail)),
        )


def alarm_row(row: Sequence[Any]) -> dict[str, Any]:
    alarm_id, kind, camera, t_ns, title, result_id, detail, acked_by, acked_ns, note = row
    return {
        "id": alarm_id,
        "kind": kind,
        "camera": camera,
        "t_ns": t_ns,
        "title": title,
        "result_id": result_id,
        "detail": json.loads(detail),
        "ack": None if acked_by is None else {"by": acked_by, "t_ns": acked_ns, "note": note},
    }
