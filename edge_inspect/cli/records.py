"""`edge-inspect records`: list recorded inspection results, or list and requeue dead MES deliveries."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

from edge_inspect.bus.contracts import VERDICTS, InspectionResult
from edge_inspect.sinks.record_store import OutboxItem, RecordStore, RecordStoreError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "records",
        help="list recorded inspection results",
        description="List recorded inspection results, newest first. Times without a UTC offset are local.",
    )
    parser.add_argument("--db", type=Path, required=True, help="record store database file")
    parser.add_argument(
        "--part",
        "--part-id",
        dest="part_id",
        metavar="PART_ID",
        help="only this part: its whole history, every inspection on every camera",
    )
    parser.add_argument("--camera", help="only this camera id")
    parser.add_argument("--verdict", choices=VERDICTS, help="only this verdict")
    parser.add_argument("--since", type=parse_time_ns, help="captured at or after (ISO 8601)")
    parser.add_argument("--until", type=parse_time_ns, help="captured before (ISO 8601)")
    parser.add_argument("--limit", type=int, default=100, help="at most N results (default 100)")
    parser.add_argument("--json", action="store_true", help="one result JSON object per line")
    parser.add_argument(
        "--dead",
        action="store_true",
        help="instead of results, list the MES dead letters: result id, attempts and the last error",
    )
    parser.add_argument(
        "--requeue-dead",
        nargs="*",
        metavar="RESULT_ID",
        help="instead of listing, make dead MES deliveries pending again (all of them when no id is given)",
    )
    parser.set_defaults(handler=run_records)


def parse_time_ns(text: str) -> int:
    """ISO 8601 to epoch nanoseconds; without an offset the time is local, `Z` means UTC."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time; write e.g. 2024-05-01T14:30:00 or 2024-05-01T12:30:00Z"
        ) from exc
    if moment.tzinfo is None:
        moment = moment.astimezone()
    return (moment - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(microseconds=1) * 1000


def format_table(results: Sequence[InspectionResult]) -> str:
    header = ("time", "camera", "part", "verdict", "score", "model", "image")
    rows = [header] + [
        (
            datetime.fromtimestamp(r.t_capture_ns / 1e9).astimezone().isoformat(timespec="milliseconds"),
            r.camera_id,
            r.part_id or "-",
            r.verdict,
            f"{r.score:.3f}",
            r.model.version,
            r.image_path or "-",
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows)
    return "\n".join(line.rstrip() for line in lines)


def print_dead_letters(items: Sequence[OutboxItem], as_json: bool) -> None:
    if as_json:
        for item in items:
            print(
                json.dumps(
                    {"result_id": item.result_id, "attempts": item.attempts, "last_error": item.last_error}
                )
            )
        return
    for item in items:
        print(f"{item.result_id}\t{item.attempts} attempts\t{item.last_error}")
    print(f"{len(items)} dead letters; redeliver with --requeue-dead [RESULT_ID ...]")


def run_records(args: argparse.Namespace) -> int:
    if not args.db.is_file():
        print(f"edge-inspect records: error: no record store at {args.db}; check --db", file=sys.stderr)
        return 2
    try:
        with RecordStore(args.db) as store:
            if args.requeue_dead is not None:
                count = store.requeue_dead(args.requeue_dead or None)
                print(f"requeued {count} dead MES deliveries")
                return 0
            if args.dead:
                print_dead_letters(store.dead_deliveries(args.limit), args.json)
                return 0
            results = store.query(
                part_id=args.part_id,
                camera_id=args.camera,
                verdict=args.verdict,
                since_ns=args.since,
                until_ns=args.until,
                limit=args.limit,
            )
    except RecordStoreError as exc:
        print(f"edge-inspect records: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        for result in results:
            print(result.to_json())
    else:
        print(format_table(results))
    return 0
