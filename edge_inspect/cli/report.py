"""`edge-inspect report`: the shift report of a line from its record store (sinks/shift_report.py)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_inspect.inspector.config import ConfigError, ShiftsConfig, load_config
from edge_inspect.sinks.record_store import RecordStore, RecordStoreError

if TYPE_CHECKING:
    from edge_inspect.inspector.config import InspectorConfig
    from edge_inspect.sinks.shift_report import ShiftWindow


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="shift report: counts, yield, first-pass yield, top defects, REVIEW rate, models",
        description=(
            "Sum up one shift of the record store per line and per camera; print it, write it as JSON, "
            "push it to the quality system. Shifts come from [shifts] of the config. Run it at shift end "
            "(a timer); --push retries until the receiver takes the report and exits 1 if it never does."
        ),
    )
    parser.add_argument("--shift", required=True, help="shift name from the config's [shifts] calendar")
    parser.add_argument(
        "--date", required=True, type=dt.date.fromisoformat, help="the date the shift starts on (YYYY-MM-DD)"
    )
    parser.add_argument(
        "--config", type=Path, help="inspector config file with [shifts] (and [mes] for --push)"
    )
    parser.add_argument("--db", type=Path, help="record store database file (default: the config's)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the report as JSON to FILE")
    parser.add_argument(
        "--push", action="store_true", help="POST the report to shifts.report_url with [mes]'s TLS and token"
    )
    parser.set_defaults(handler=run_report)


def run_report(args: argparse.Namespace) -> int:
    from edge_inspect.sinks.shift_report import shift_window

    try:
        config = load_config(args.config) if args.config is not None else None
    except ConfigError as exc:
        return _fail(str(exc))
    shifts = config.shifts if config is not None else ShiftsConfig()
    db = args.db or (config.db_path if config is not None else None)
    if db is None or not db.is_file():
        return _fail(f"no record store at {db}; give --db or --config" if db else "give --db or --config")
    try:
        window = shift_window(shifts, args.shift, args.date)
        report = _read_report(db, window, shifts.line)
    except (ValueError, RecordStoreError) as exc:
        return _fail(str(exc))
    print(format_report(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if args.push:
        return push(report, config)
    return 0


def _read_report(db: Path, window: ShiftWindow, line: str) -> dict[str, Any]:
    from edge_inspect.sinks.shift_report import report_from_store

    with RecordStore(db) as store:
        return report_from_store(store, window, line)


def push(report: dict[str, Any], config: InspectorConfig | None) -> int:
    from edge_inspect.sinks.shift_report import push_report, webhook_for_reports

    if config is None or config.shifts.report_url is None:
        return _fail("--push needs --config with shifts.report_url")
    try:
        reply = push_report(report, webhook_for_reports(config.mes, config.shifts.report_url))
    except (ValueError, RuntimeError) as exc:
        print(f"edge-inspect report: push failed: {exc}", file=sys.stderr)
        return 1
    print(f"pushed to {config.shifts.report_url} (HTTP {reply.status})")
    return 0


def format_report(report: dict[str, Any]) -> str:
    lines = [f"{report['line']}  shift {report['shift']}  {report['start']} .. {report['end']}"]
    scopes = [("line", report["totals"]), *report["cameras"].items()]
    for name, s in scopes:
        v = s["verdicts"]
        lines.append(
            f"{name}: {s['inspected']} inspected (OK {v['OK']}, NG {v['NG']}, REVIEW {v['REVIEW']})  "
            f"yield {_pct(s['yield'])}  first-pass yield {_pct(s['first_pass_yield'])} "
            f"of {s['parts']} parts  REVIEW rate {_pct(s['review_rate'])}"
        )
        if s["top_defects"]:
            lines.append("  top defects: " + ", ".join(f"{d['cls']} {d['count']}" for d in s["top_defects"]))
        models = ", ".join(f"{m['name']} {m['version']} ({m['results']})" for m in s["models"])
        lines.append(f"  models: {models or '-'}")
    return "\n".join(lines)


def _pct(ratio: float | None) -> str:
    return "-" if ratio is None else f"{100 * ratio:.1f}%"


def _fail(message: str) -> int:
    print(f"edge-inspect report: error: {message}", file=sys.stderr)
    return 2
