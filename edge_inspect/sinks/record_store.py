"""The traceability record: every inspection result, its archived image, the MES outbox and operator labels.

One SQLite file in WAL mode with `synchronous=NORMAL`: a committed transaction survives the inspector
being SIGKILLed (not necessarily a power cut, which would need `FULL` and cost a disk flush per batch).

Threading: a `RecordStore` wraps ONE sqlite3 connection and must stay in the thread that opened it
(sqlite3 enforces this). Each thread that needs the records opens its own `RecordStore` on the same
file; WAL lets one writer and any number of readers work at the same time, and `busy_timeout` makes
a second writer wait for the first instead of failing.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import cv2
import numpy as np

from edge_inspect.bus.contracts import VERDICTS, CameraHealth, InspectionResult

SCHEMA_VERSION = 3
OUTBOX_STATES: tuple[str, ...] = ("pending", "delivered", "dead")
LABELS: tuple[str, ...] = ("OK", "NG")
DEFAULT_BUSY_TIMEOUT_S = 10.0
_HEALTH_COLUMNS = (
    "camera_id, station, last_frame_ns, frames_received, captured, reconnects, underruns, stale_events, "
    "source_frame_id"
)
_OUTBOX_COLUMNS = "id, result_id, payload, attempts, next_attempt_ns, state, last_error, delivered_ns"

_SCHEMA = """
CREATE TABLE results (
    result_id     TEXT PRIMARY KEY,
    camera_id     TEXT NOT NULL,
    seq           INTEGER NOT NULL,
    part_id       TEXT,
    station       TEXT NOT NULL,
    t_capture_ns  INTEGER NOT NULL,
    verdict       TEXT NOT NULL CHECK (verdict IN ('OK', 'NG', 'REVIEW')),
    score         REAL NOT NULL,
    threshold     REAL NOT NULL,
    model_name    TEXT NOT NULL,
    model_version TEXT NOT NULL,
    model_sha256  TEXT NOT NULL,
    image_path    TEXT,
    result_json   TEXT NOT NULL
);
CREATE INDEX results_part ON results (part_id, t_capture_ns);
CREATE INDEX results_camera_time ON results (camera_id, t_capture_ns);
CREATE INDEX results_verdict_time ON results (verdict, t_capture_ns);
CREATE INDEX results_time ON results (t_capture_ns);

CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY,
    result_id       TEXT NOT NULL UNIQUE REFERENCES results (result_id),
    payload         TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_ns INTEGER NOT NULL,
    delivered_ns    INTEGER,
    last_error      TEXT,
    state           TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'dead'))
);
CREATE INDEX outbox_due ON outbox (state, next_attempt_ns);

CREATE TABLE labels (
    id           INTEGER PRIMARY KEY,
    result_id    TEXT NOT NULL REFERENCES results (result_id),
    label        TEXT NOT NULL CHECK (label IN ('OK', 'NG')),
    source       TEXT NOT NULL,
    labelled_by  TEXT NOT NULL,
    labelled_ns  INTEGER NOT NULL,
    note         TEXT
);
CREATE INDEX labels_result ON labels (result_id, labelled_ns);
"""

# Schema 2: per camera, the most recently captured frame whose result is committed (updated in the results'
# transaction). After a restart the inspector compares the next frame with it: a jump is a seq_gap.
_SEQ_SCHEMA = """
CREATE TABLE camera_seq (
    camera_id     TEXT PRIMARY KEY,
    seq           INTEGER NOT NULL,
    t_capture_ns  INTEGER NOT NULL
);
"""

# Schema 3: per camera, the newest health the inspector saw (inspector/camera_health.py), saved about once a
# second by housekeeping; the plant outputs and the console read it. `last_frame_ns` is wall clock.
# And the shift reports made at each shift's end (inspector/shift_reporter.py), kept until pushed: to the
# report webhook (`pushed_ns`) and by the MQTT output (`mqtt_ns`).
_CAMERA_HEALTH_SCHEMA = """
CREATE TABLE camera_health (
    camera_id        TEXT PRIMARY KEY,
    station          TEXT NOT NULL,
    last_frame_ns    INTEGER NOT NULL,
    frames_received  INTEGER NOT NULL,
    captured         INTEGER NOT NULL,
    reconnects       INTEGER NOT NULL,
    underruns        INTEGER NOT NULL,
    stale_events     INTEGER NOT NULL,
    source_frame_id  INTEGER
);

CREATE TABLE shift_reports (
    report_key  TEXT PRIMARY KEY,
    end_ns      INTEGER NOT NULL,
    report_json TEXT NOT NULL,
    created_ns  INTEGER NOT NULL,
    pushed_ns   INTEGER,
    attempts    INTEGER NOT NULL DEFAULT 0,
    last_error  TEXT,
    mqtt_ns     INTEGER
);
"""
# What each older schema version lacks, in order: an upgrade applies the steps after the file's version.
_UPGRADES: tuple[tuple[int, str], ...] = ((2, _SEQ_SCHEMA), (3, _CAMERA_HEALTH_SCHEMA))


class RecordStoreError(RuntimeError):
    """The record store cannot do what was asked; the message says why and what to do."""


@dataclass(frozen=True)
class OutboxItem:
    """One MES delivery. `payload` is the result JSON exactly as recorded; `attempts` counts POSTs made."""

    id: int
    result_id: str
    payload: str
    attempts: int
    next_attempt_ns: int
    state: str
    last_error: str | None
    delivered_ns: int | None


@dataclass(frozen=True)
class CameraReading:
    """One camera at one moment. `last_frame_ns`: wall clock when its last frame reached the inspector."""

    camera_id: str
    station: str
    last_frame_ns: int
    frames_received: int
    health: CameraHealth
    source_frame_id: int | None = None

    def age_s(self, now_ns: int) -> float:
        return max(0.0, (now_ns - self.last_frame_ns) / 1e9)


@dataclass(frozen=True)
class Label:
    """An operator's (or another source's) confirmation or correction of one result, for retraining."""

    id: int
    result_id: str
    label: str
    source: str
    labelled_by: str
    labelled_ns: int
    note: str | None


class RecordStore:
    """Results, outbox and labels in one SQLite file. Open one per thread (see the module docstring).

    `image_dir` is needed only by `archive_image`; readers such as the `records` command and the MES
    deliverer leave it out.
    """

    def __init__(
        self, db_path: Path, image_dir: Path | None = None, busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S
    ) -> None:
        self.db_path = Path(db_path)
        self.image_dir = Path(image_dir) if image_dir is not None else None
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: no implicit transactions; every write below opens its own explicitly.
        self._conn = sqlite3.connect(self.db_path, timeout=busy_timeout_s, isolation_level=None)
        try:
            self._configure(busy_timeout_s)
            self._ensure_schema()
        except BaseException:
            self._conn.close()
            raise

    def _configure(self, busy_timeout_s: float) -> None:
        self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        # WAL is a property of the file, set once: switching needs the file to itself, and SQLite reports
        # "database is locked" at once (no busy wait) when another connection, just creating the store,
        # holds it. So only the first opener switches; the others find WAL already set.
        mode = self._conn.execute("PRAGMA journal_mode").fetchone()[0]
        deadline = time.monotonic() + busy_timeout_s
        while str(mode).lower() != "wal":
            try:
                mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
                mode = self._conn.execute("PRAGMA journal_mode").fetchone()[0]
        if str(mode).lower() != "wal":
            raise RecordStoreError(
                f"cannot switch {self.db_path} to WAL mode (got {mode!r}); the file system probably does not "
                "support shared memory (network shares do not): put the record store on a local disk"
            )
        self._conn.execute("PRAGMA synchronous = NORMAL")
        self._conn.execute("PRAGMA foreign_keys = ON")

    def _ensure_schema(self) -> None:
        with self._write() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RecordStoreError(
                    f"record store {self.db_path} has schema version {version}, newer than the version "
                    f"{SCHEMA_VERSION} this edge-inspect understands; upgrade edge-inspect, or point it at "
                    "another database file"
                )
            if version == SCHEMA_VERSION:
                return
            if version >= 1:
                # In place: each step only adds tables; nothing existing changes.
                for step, script in _UPGRADES:
                    if version < step:
                        for statement in _split_statements(script):
                            conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                return
            existing = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            if existing:
                raise RecordStoreError(
                    f"{self.db_path} is an SQLite database with tables {existing} but no edge-inspect schema "
                    "version; it is not a record store: choose another file"
                )
            for statement in _split_statements(_SCHEMA + _SEQ_SCHEMA + _CAMERA_HEALTH_SCHEMA):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE takes the write lock up front, so a busy database waits at BEGIN (where busy_timeout
        # applies) instead of failing half-way through a transaction.
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
            self._conn.execute("COMMIT")
        except BaseException:
            # Also after a failed COMMIT (disk full), which can leave the transaction open.
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> RecordStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Images ------------------------------------------------------------------------------------------

    def archive_image(
        self, result: InspectionResult, image: np.ndarray, heat_map: np.ndarray | None = None
    ) -> str:
        """Write the part's image as lossless PNG, atomically, and return its path; with `heat_map` (an
        8-bit image of the frame's size, postprocess.heat_map), that too, at `heat_map_path(path)`.

        Layout: `image_dir/YYYY-MM-DD/<camera_id>/<result_id>.png`, the date being the capture day in
        UTC. Put the returned path into the result (`dataclasses.replace(result, image_path=path)`)
        before `add_results`.
        """
        if self.image_dir is None:
            raise RecordStoreError(
                "this RecordStore was opened without image_dir; open it with RecordStore(db_path, image_dir) "
                "to archive images"
            )
        day = datetime.fromtimestamp(result.t_capture_ns / 1e9, tz=timezone.utc).strftime("%Y-%m-%d")
        directory = self.image_dir / day / _path_component(result.camera_id)
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / f"{_path_component(result.result_id)}.png"
        if heat_map is not None:
            _write_png(heat_map, heat_map_path(target), result.result_id)
        _write_png(image, target, result.result_id)
        return str(target)

    # Results -----------------------------------------------------------------------------------------

    def add_results(
        self, items: Sequence[InspectionResult], with_outbox: bool, now_ns: int | None = None
    ) -> set[str]:
        """Record results and, with `with_outbox`, queue each for MES delivery, all in one transaction,
        with each camera's newest committed frame (`camera_seqs`). Returns the ids newly recorded.

        Idempotent on `result_id`: a result already recorded is left as it was and gets no second
        outbox row (a replayed frame). `now_ns` is when the deliveries become due (default: now).
        """
        due_ns = time.time_ns() if now_ns is None else now_ns
        inserted: set[str] = set()
        with self._write() as conn:
            for result in items:
                payload = result.to_json()
                if conn.execute(_INSERT_RESULT, _result_row(result, payload)).rowcount:
                    inserted.add(result.result_id)
                    if with_outbox:
                        conn.execute(
                            "INSERT INTO outbox (result_id, payload, next_attempt_ns) VALUES (?, ?, ?)",
                            (result.result_id, payload, due_ns),
                        )
            _advance_camera_seqs(conn, items)
        return inserted

    def camera_seqs(self) -> dict[str, tuple[int, int]]:
        """Per camera, (seq, t_capture_ns) of the most recently captured frame whose result is committed."""
        rows = self._conn.execute("SELECT camera_id, seq, t_capture_ns FROM camera_seq")
        return {camera: (seq, t_capture_ns) for camera, seq, t_capture_ns in rows}

    def save_camera_health(self, readings: Sequence[CameraReading]) -> None:
        """Replace each camera's saved health with its newest reading."""
        rows = [
            (
                r.camera_id,
                r.station,
                r.last_frame_ns,
                r.frames_received,
                r.health.captured,
                r.health.reconnects,
                r.health.underruns,
                r.health.stale_events,
                r.source_frame_id,
            )
            for r in readings
        ]
        placeholders = ", ".join("?" * 9)
        with self._write() as conn:
            conn.executemany(
                f"INSERT OR REPLACE INTO camera_health ({_HEALTH_COLUMNS}) VALUES ({placeholders})", rows
            )

    def camera_health(self) -> list[CameraReading]:
        """Every camera's saved health, by camera id."""
        rows = self._conn.execute(f"SELECT {_HEALTH_COLUMNS} FROM camera_health ORDER BY camera_id")
        return [
            CameraReading(
                camera_id=row[0],
                station=row[1],
                last_frame_ns=row[2],
                frames_received=row[3],
                health=CameraHealth(
                    captured=row[4], reconnects=row[5], underruns=row[6], stale_events=row[7]
                ),
                source_frame_id=row[8],
            )
            for row in rows
        ]

    def add_shift_report(self, key: str, end_ns: int, report: dict[str, Any], now_ns: int) -> bool:
        """Keep a finished shift's report; False when it was made before (a restart made it again)."""
        with self._write() as conn:
            cursor = conn.execute(
                "INSERT OR IGNORE INTO shift_reports (report_key, end_ns, report_json, created_ns)"
                " VALUES (?, ?, ?, ?)",
                (key, end_ns, json.dumps(report, separators=(",", ":")), now_ns),
            )
        return cursor.rowcount == 1

    def last_shift_end_ns(self) -> int | None:
        return self._conn.execute("SELECT MAX(end_ns) FROM shift_reports").fetchone()[0]

    def shift_reports(self, unpushed_to: str | None = None) -> list[tuple[str, dict[str, Any]]]:
        """(key, report), oldest first; `unpushed_to` "webhook" or "mqtt": only those not delivered there."""
        where = {None: "", "webhook": " WHERE pushed_ns IS NULL", "mqtt": " WHERE mqtt_ns IS NULL"}
        rows = self._conn.execute(
            f"SELECT report_key, report_json FROM shift_reports{where[unpushed_to]} ORDER BY end_ns"
        )
        return [(key, json.loads(text)) for key, text in rows]

    def mark_report_pushed(self, key: str, to: str, now_ns: int, error: str | None = None) -> None:
        """Delivered (`error` None) or one more failed attempt at the webhook."""
        with self._write() as conn:
            if to == "mqtt":
                conn.execute("UPDATE shift_reports SET mqtt_ns = ? WHERE report_key = ?", (now_ns, key))
            elif error is None:
                conn.execute(
                    "UPDATE shift_reports SET pushed_ns = ?, attempts = attempts + 1, last_error = NULL"
                    " WHERE report_key = ?",
                    (now_ns, key),
                )
            else:
                conn.execute(
                    "UPDATE shift_reports SET attempts = attempts + 1, last_error = ? WHERE report_key = ?",
                    (error, key),
                )

    def is_recorded(self, result_id: str) -> bool:
        row = self._conn.execute("SELECT 1 FROM results WHERE result_id = ?", (result_id,)).fetchone()
        return row is not None

    def query(
        self,
        part_id: str | None = None,
        camera_id: str | None = None,
        verdict: str | None = None,
        since_ns: int | None = None,
        until_ns: int | None = None,
        limit: int = 100,
    ) -> list[InspectionResult]:
        """Results matching every given filter, newest capture first; `since_ns` inclusive, `until_ns` not."""
        if verdict is not None and verdict not in VERDICTS:
            raise RecordStoreError(f"verdict {verdict!r} is not one of {VERDICTS}")
        if limit < 1:
            raise RecordStoreError(f"limit must be at least 1, got {limit}")
        clauses: list[str] = []
        params: list[Any] = []
        for column, op, value in (
            ("part_id", "=", part_id),
            ("camera_id", "=", camera_id),
            ("verdict", "=", verdict),
            ("t_capture_ns", ">=", since_ns),
            ("t_capture_ns", "<", until_ns),
        ):
            if value is not None:
                clauses.append(f"{column} {op} ?")
                params.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._conn.execute(
            f"SELECT result_json FROM results {where} ORDER BY t_capture_ns DESC, seq DESC LIMIT ?",
            (*params, limit),
        )
        return [InspectionResult.from_dict(json.loads(row[0])) for row in rows]

    def get(self, result_id: str) -> InspectionResult | None:
        row = self._conn.execute(
            "SELECT result_json FROM results WHERE result_id = ?", (result_id,)
        ).fetchone()
        return None if row is None else InspectionResult.from_dict(json.loads(row[0]))

    def counts_by_verdict(self) -> dict[str, int]:
        counts = dict.fromkeys(VERDICTS, 0)
        counts.update(self._conn.execute("SELECT verdict, COUNT(*) FROM results GROUP BY verdict").fetchall())
        return counts

    # MES outbox --------------------------------------------------------------------------------------

    def due_deliveries(self, now_ns: int, limit: int) -> list[OutboxItem]:
        """Pending deliveries whose next attempt is due, the longest-waiting first."""
        rows = self._conn.execute(
            f"SELECT {_OUTBOX_COLUMNS} FROM outbox"
            " WHERE state = 'pending' AND next_attempt_ns <= ? ORDER BY next_attempt_ns, id LIMIT ?",
            (now_ns, limit),
        )
        return [OutboxItem(*row) for row in rows]

    def outbox_item(self, result_id: str) -> OutboxItem | None:
        """The delivery of one result in whatever state it is, e.g. to see why it went dead."""
        row = self._conn.execute(
            f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE result_id = ?", (result_id,)
        ).fetchone()
        return None if row is None else OutboxItem(*row)

    def next_due_ns(self) -> int | None:
        """When the earliest pending delivery becomes due, or None when nothing is pending."""
        row = self._conn.execute("SELECT MIN(next_attempt_ns) FROM outbox WHERE state = 'pending'").fetchone()
        return row[0]

    def mark_delivered(self, ids: Sequence[int], now_ns: int) -> None:
        with self._write() as conn:
            conn.executemany(
                "UPDATE outbox SET state = 'delivered', delivered_ns = ?, attempts = attempts + 1,"
                " last_error = NULL WHERE id = ? AND state = 'pending'",
                [(now_ns, item_id) for item_id in ids],
            )

    def mark_retry(self, id: int, error: str, next_attempt_ns: int) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ?, next_attempt_ns = ?"
                " WHERE id = ? AND state = 'pending'",
                (error, next_attempt_ns, id),
            )

    def mark_dead(self, id: int, error: str) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE outbox SET state = 'dead', attempts = attempts + 1, last_error = ?"
                " WHERE id = ? AND state = 'pending'",
                (error, id),
            )

    def requeue_dead(self, result_ids: Sequence[str] | None = None, now_ns: int | None = None) -> int:
        """Make dead deliveries pending again (all of them, or those of `result_ids`); returns how many.

        For after the cause was fixed (receiver configuration, payload validation on the MES side).
        The attempt count restarts so that the back-off starts short again.
        """
        due_ns = time.time_ns() if now_ns is None else now_ns
        update = "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_ns = ? WHERE state = 'dead'"
        with self._write() as conn:
            if result_ids is None:
                return conn.execute(update, (due_ns,)).rowcount
            return sum(
                conn.execute(f"{update} AND result_id = ?", (due_ns, result_id)).rowcount
                for result_id in result_ids
            )

    # Retention (sinks/retention.py) ----------------------------------------------------------------------

    def forget_images_under(self, prefix: str) -> int:
        """Clear `image_path` of every result whose image lies under `prefix` (a pruned archive day)."""
        with self._write() as conn:
            escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            return conn.execute(
                "UPDATE results SET image_path = NULL,"
                " result_json = json_set(result_json, '$.image_path', NULL)"
                " WHERE image_path LIKE ? ESCAPE '\\'",
                (escaped + "%",),
            ).rowcount

    def delete_settled_before(self, cutoff_ns: int) -> int:
        """Delete results captured before `cutoff_ns` that nothing depends on any more: their MES delivery
        is done (or was never queued) and no label points at them (labels are training data)."""
        with self._write() as conn:
            conn.execute(
                "DELETE FROM outbox WHERE state = 'delivered' AND result_id IN "
                "(SELECT result_id FROM results WHERE t_capture_ns < ?"
                " AND result_id NOT IN (SELECT result_id FROM labels))",
                (cutoff_ns,),
            )
            return conn.execute(
                "DELETE FROM results WHERE t_capture_ns < ?"
                " AND result_id NOT IN (SELECT result_id FROM outbox)"
                " AND result_id NOT IN (SELECT result_id FROM labels)",
                (cutoff_ns,),
            ).rowcount

    def count_pending(self) -> int:
        # Counted through the (state, next_attempt_ns) index: cheap however many delivered rows there are.
        return self._conn.execute("SELECT COUNT(*) FROM outbox WHERE state = 'pending'").fetchone()[0]

    def outbox_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(OUTBOX_STATES, 0)
        counts.update(self._conn.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state").fetchall())
        return counts

    def count_dead(self) -> int:
        # Through the (state, next_attempt_ns) index, like count_pending.
        return self._conn.execute("SELECT COUNT(*) FROM outbox WHERE state = 'dead'").fetchone()[0]

    def dead_deliveries(self, limit: int = 100) -> list[OutboxItem]:
        """Dead letters, oldest first by outbox row, each with its attempts and last error; for listing
        them before `requeue_dead`."""
        if limit < 1:
            raise RecordStoreError(f"limit must be at least 1, got {limit}")
        rows = self._conn.execute(
            f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE state = 'dead' ORDER BY id LIMIT ?", (limit,)
        )
        return [OutboxItem(*row) for row in rows]

    # Labels ------------------------------------------------------------------------------------------

    def add_label(
        self,
        result_id: str,
        label: str,
        labelled_by: str,
        note: str | None = None,
        source: str = "operator",
        labelled_ns: int | None = None,
    ) -> Label:
        """Record a confirmation or correction of a result; the latest label of a result wins."""
        if label not in LABELS:
            raise RecordStoreError(f"label {label!r} is not one of {LABELS}")
        when = time.time_ns() if labelled_ns is None else labelled_ns
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM results WHERE result_id = ?", (result_id,)).fetchone() is None:
                raise RecordStoreError(
                    f"cannot label result {result_id!r}: no such result in {self.db_path}; check the id "
                    "(`edge-inspect records --db ... --json` lists them)"
                )
            cursor = conn.execute(
                "INSERT INTO labels (result_id, label, source, labelled_by, labelled_ns, note)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (result_id, label, source, labelled_by, when, note),
            )
        return Label(int(cursor.lastrowid or 0), result_id, label, source, labelled_by, when, note)

    def labels(self, latest_only: bool = True) -> list[Label]:
        """Labels, oldest first; with `latest_only`, only the most recent label of each result."""
        columns = "id, result_id, label, source, labelled_by, labelled_ns, note"
        if latest_only:
            sql = (
                f"SELECT {columns} FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY result_id"
                " ORDER BY labelled_ns DESC, id DESC) AS newest FROM labels) WHERE newest = 1"
                " ORDER BY labelled_ns, id"
            )
        else:
            sql = f"SELECT {columns} FROM labels ORDER BY labelled_ns, id"
        return [Label(*row) for row in self._conn.execute(sql)]


_INSERT_RESULT = (
    "INSERT OR IGNORE INTO results (result_id, camera_id, seq, part_id, station, t_capture_ns, verdict,"
    " score, threshold, model_name, model_version, model_sha256, image_path, result_json)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _result_row(result: InspectionResult, payload: str) -> tuple[Any, ...]:
    return (
        result.result_id,
        result.camera_id,
        result.seq,
        result.part_id,
        result.station,
        result.t_capture_ns,
        result.verdict,
        result.score,
        result.threshold,
        result.model.name,
        result.model.version,
        result.model.sha256,
        result.image_path,
        payload,
    )


def _advance_camera_seqs(conn: sqlite3.Connection, items: Sequence[InspectionResult]) -> None:
    """Each camera's row moves to the batch's most recently captured frame, if it is newer than the row's:
    a replayed (older) frame never moves it back, a restarted camera (newer capture, lower seq) does."""
    newest: dict[str, InspectionResult] = {}
    for result in items:
        held = newest.get(result.camera_id)
        if held is None or (result.t_capture_ns, result.seq) > (held.t_capture_ns, held.seq):
            newest[result.camera_id] = result
    for result in newest.values():
        conn.execute(
            "INSERT INTO camera_seq (camera_id, seq, t_capture_ns) VALUES (?, ?, ?)"
            " ON CONFLICT (camera_id) DO UPDATE SET seq = excluded.seq, t_capture_ns = excluded.t_capture_ns"
            " WHERE (excluded.t_capture_ns, excluded.seq) > (camera_seq.t_capture_ns, camera_seq.seq)",
            (result.camera_id, result.seq, result.t_capture_ns),
        )


def _split_statements(script: str) -> list[str]:
    return [statement.strip() for statement in script.split(";") if statement.strip()]


# File systems allow 255 bytes a name; ids in other scripts triple in length when percent-encoded.
MAX_NAME_BYTES = 200


def heat_map_path(image_path: Path) -> Path:
    """Where the heat map of the part archived at `image_path` lies (beside it), if it has one."""
    return image_path.with_name(f"{image_path.stem}.heat.png")


def _write_png(image: np.ndarray, target: Path, result_id: str) -> None:
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise RecordStoreError(
            f"OpenCV could not encode the image of {result_id} as PNG "
            f"(shape {image.shape}, dtype {image.dtype}); pass a uint8 or uint16 mono or BGR array"
        )
    # Written next to the target and renamed over it: a reader never sees a half-written PNG, and a
    # crash leaves at worst a stray .tmp file. No fsync: the database itself only promises
    # crash (not power-loss) durability, and a flush per frame would cost more than the encoding.
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=".", suffix=".png.tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(encoded.tobytes())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _path_component(text: str) -> str:
    """A file-system-safe name: percent-encoding keeps distinct ids distinct; a name too long for the file
    system keeps its beginning and gets a hash of the whole id, so it stays distinct."""
    encoded = quote(text, safe="")
    # quote() leaves dots alone; a leading one would make "." / ".." or a hidden file.
    encoded = "%2E" + encoded[1:] if encoded.startswith(".") else encoded
    if len(encoded) <= MAX_NAME_BYTES:
        return encoded
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    head = encoded[: MAX_NAME_BYTES - len(digest) - 1]
    if "%" in head[-2:]:  # never cut an escape in half
        head = head[: head.rindex("%")]
    return f"{head}~{digest}"
