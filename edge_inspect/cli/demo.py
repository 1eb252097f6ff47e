"""`edge-inspect demo`: the demo line, a camera replaying ELPV cells, the inspector and live alarms."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the demo line (camera replaying ELPV cells, inspector, live alarm view)",
        description="Prepare the demo model (trained on first run, then cached), start a camera that replays "
        "real ELPV solar-cell images, the inspector and the operator console (its URL and a demo login are "
        "printed), and show NG alarms live.",
    )
    p.add_argument(
        "--workdir", default="var/demo", help="model cache, records and images (default: %(default)s)"
    )
    p.add_argument("--seconds", type=float, default=None, help="stop cleanly after N seconds with a summary")
    p.add_argument("--fps", type=float, default=10.0, help="parts per second (default: %(default)s)")
    p.add_argument(
        "--json", action="store_true", help="print the summary as one JSON object on the last line"
    )
    p.add_argument(
        "--console-port",
        type=int,
        default=8090,
        help="port of the operator console on loopback, another free one if taken (default: %(default)s)",
    )
    p.set_defaults(handler=demo_command)


def demo_command(args: argparse.Namespace) -> int:
    from edge_inspect.demo import run_demo

    summary = run_demo(Path(args.workdir), args.seconds, args.fps, args.json, args.console_port)
    if args.json:
        print(json.dumps(summary))
    else:
        print("\nSummary: " + ", ".join(f"{k}={v}" for k, v in summary.items()))
    return 0
