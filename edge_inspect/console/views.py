"""Read-only queries behind the console's views: the REVIEW queue, the shift view, part lookup, images.

Each opens its own connection to the record store (they run in the web server's worker threads) and
returns JSON-ready dicts. The shift view reuses the shift report (sinks/shift_report.py), so the console
and `edge-inspect report` never disagree.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import cv2
import numpy as np

from edge_inspect.bus.contracts import InspectionResult
from edge_inspect.console.line_watch import result_summary
from edge_inspect.inspector.config import ShiftsConfig
from edge_inspect.sinks.record_store import heat_map_path
from edge_inspect.sinks.shift_report import ShiftWindow, build_report, shift_window

# Without a shift calendar the console shows whole days, under this name.
WHOLE_DAY = "day"
CHART_BUCKETS = 24


@contextmanager
def _records(db: Path) -> Iterator[sqlite3.Connection]:
    # Read-only (mode=ro): the console never writes the record store but through RecordStore.add_label.
    conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=10.0)
    try:
        yield conn
    finally:
        conn.close()


def _results(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> list[InspectionResult]:
    return [InspectionResult.from_dict(json.loads(row[0])) for row in conn.execute(sql, params)]


def _labels_of(conn: sqlite3.Connection, result_ids: list[str]) -> dict[str, dict[str, Any]]:
    """The latest label of each result that has one."""
    found: dict[str, dict[str, Any]] = {}
    for result_id in result_ids:
        row = conn.execute(
            "SELECT label, labelled_by, labelled_ns, note FROM labels WHERE result_id = ?"
            " ORDER BY labelled_ns DESC, id DESC LIMIT 1",
            (result_id,),
        ).fetchone()
        if row is not None:
            found[result_id] = {"label": row[0], "by": row[1], "t_ns": row[2], "note": row[3]}
    return found


def review_queue(db: Path, limit: int = 60) -> list[dict[str, Any]]:
    """REVIEW parts nobody has labelled yet, newest first."""
    with _records(db) as conn:
        results = _results(
            conn,
            "SELECT result_json FROM results WHERE verdict = 'REVIEW'"
            " AND result_id NOT IN (SELECT result_id FROM labels) ORDER BY t_capture_ns DESC LIMIT ?",
            (limit,),
        )
    return [result_summary(r) for r in results]


def part_lookup(
    db: Path, part_id: str | None, since_ns: int | None, until_ns: int | None, limit: int = 200
) -> list[dict[str, Any]]:
    """Every inspection of a part (or in a capture-time range), newest first, with its label if any."""
    clauses, params = [], []
    for column, op, value in (
        ("part_id", "=", part_id),
        ("t_capture_ns", ">=", since_ns),
        ("t_capture_ns", "<", until_ns),
    ):
        if value is not None:
            clauses.append(f"{column} {op} ?")
            params.append(value)
    if not clauses:
        raise ValueError("give a part id or a time range")
    with _records(db) as conn:
        results = _results(
            conn,
            f"SELECT result_json FROM results WHERE {' AND '.join(clauses)}"
            " ORDER BY t_capture_ns DESC, seq DESC LIMIT ?",
            (*params, limit),
        )
        labels = _labels_of(conn, [r.result_id for r in results])
    return [result_summary(r) | {"label": labels.get(r.result_id)} for r in results]


def image_file(db: Path, image_dir: Path, result_id: str) -> Path | None:
    """The archived image of a result, only if it lies inside the image archive (never another file)."""
    with _records(db) as conn:
        row = conn.execute("SELECT image_path FROM results WHERE result_id = ?", (result_id,)).fetchone()
    if row is None or not row[0]:
        return None
    path = Path(row[0]).resolve()
    if not path.is_relative_to(image_dir.resolve()) or not path.is_file():
        return None
    return path


def heat_overlay(db: Path, image_dir: Path, result_id: str) -> bytes | None:
    """The part's archived heat map as a PNG to lay over its image: coloured from blue (half the threshold)
    through the threshold to red, transparent where the part looks as good parts do; None without one."""
    image = image_file(db, image_dir, result_id)
    heat_path = heat_map_path(image) if image is not None else None
    if heat_path is None or not heat_path.is_file():
        return None
    levels = cv2.imread(str(heat_path), cv2.IMREAD_GRAYSCALE)
    if levels is None:
        return None
    colours = cv2.applyColorMap(levels, cv2.COLORMAP_JET)
    # 128 is the threshold: invisible up to half of it, then more opaque up to 80 %.
    alpha = np.clip((levels.astype(np.int32) - 64) * 3, 0, 204).astype(np.uint8)
    ok, encoded = cv2.imencode(".png", np.dstack([colours, alpha]))
    return encoded.tobytes() if ok else None


def shift_names(shifts: ShiftsConfig) -> list[str]:
    return list(shifts.calendar) or [WHOLE_DAY]


def window_of(shifts: ShiftsConfig, name: str, date: dt.date) -> ShiftWindow:
    """The shift `name` starting on `date`; without a calendar, the whole day in the calendar's zone."""
    if shifts.calendar:
        return shift_window(shifts, name, date)
    if name != WHOLE_DAY:
        raise ValueError(f"no shift {name!r}: without a [shifts] calendar the console shows whole days")
    zone = ZoneInfo(shifts.timezone)
    start = dt.datetime.combine(date, dt.time(), tzinfo=zone)
    end = dt.datetime.combine(date + dt.timedelta(days=1), dt.time(), tzinfo=zone)
    return ShiftWindow(WHOLE_DAY, date, shifts.timezone, start, end)


def current_window(shifts: ShiftsConfig, now: dt.datetime) -> ShiftWindow:
    """The shift running at `now` (one that started yesterday may still run), or the latest that ended."""
    today = now.astimezone(ZoneInfo(shifts.timezone)).date()
    candidates = [
        window_of(shifts, name, day)
        for day in (today - dt.timedelta(days=1), today)
        for name in shift_names(shifts)
    ]
    running = [w for w in candidates if w.start <= now < w.end]
    if running:
        return running[0]
    ended = [w for w in candidates if w.end <= now]
    return max(ended, key=lambda w: w.end) if ended else candidates[-1]


def shift_view(db: Path, window: ShiftWindow, line: str, buckets: int = CHART_BUCKETS) -> dict[str, Any]:
    """The shift report of `window`, plus the NG rate per camera over the shift in `buckets` steps and the
    model in service (the one that judged the newest result)."""
    start_ns, end_ns = window.start_ns, window.end_ns
    with _records(db) as conn:
        results = _results(
            conn,
            "SELECT result_json FROM results WHERE t_capture_ns >= ? AND t_capture_ns < ?",
            (start_ns, end_ns),
        )
        # Parts of this shift inspected before it: their first pass was then (one indexed query).
        seen_before = {
            row[0]
            for row in conn.execute(
                "SELECT DISTINCT part_id FROM results WHERE t_capture_ns < ? AND part_id IN"
                " (SELECT part_id FROM results WHERE t_capture_ns >= ? AND t_capture_ns < ?)",
                (start_ns, start_ns, end_ns),
            )
        }
        step = max(1, (end_ns - start_ns) // buckets)
        rows = conn.execute(
            "SELECT camera_id, (t_capture_ns - ?) / ? AS bucket, COUNT(*), SUM(verdict = 'NG')"
            " FROM results WHERE t_capture_ns >= ? AND t_capture_ns < ? GROUP BY camera_id, bucket",
            (start_ns, step, start_ns, end_ns),
        ).fetchall()
        newest = conn.execute(
            "SELECT model_name, model_version, model_sha256 FROM results ORDER BY t_capture_ns DESC LIMIT 1"
        ).fetchone()
    series: dict[str, list[dict[str, Any]]] = {}
    for camera, bucket, inspected, ng in rows:
        series.setdefault(camera, []).append(
            {"t_ns": start_ns + bucket * step, "inspected": inspected, "ng": ng, "ng_rate": ng / inspected}
        )
    for points in series.values():
        points.sort(key=lambda p: p["t_ns"])
    return {
        "report": build_report(results, window, line, seen_before),
        "series": series,
        "bucket_ns": step,
        "start_ns": start_ns,
        "end_ns": end_ns,
        "model_in_service": None
        if newest is None
        else {"name": newest[0], "version": newest[1], "sha256": newest[2]},
    }
