"""`edge-inspect label RESULT_ID OK|NG`: a person confirms or corrects the verdict of an inspected part."""

from __future__ import annotations

import argparse
import getpass
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "label",
        help="confirm or correct the verdict of an inspected part",
        description="Record a person's OK/NG label for a result (REVIEW parts especially). The latest label "
        "of a result wins; `edge-inspect retrain` trains on confirmed labels.",
    )
    p.add_argument("result_id", help="the result's id (see `edge-inspect records --json`)")
    p.add_argument("label", choices=("OK", "NG"), help="what the part really is")
    p.add_argument(
        "--db", default="var/inspector/records.sqlite", help="record database (default: %(default)s)"
    )
    p.add_argument("--by", default=getpass.getuser(), help="who labels (default: the current user)")
    p.add_argument("--note", default=None, help="free text, e.g. the defect seen")
    p.set_defaults(handler=label_command)


def label_command(args: argparse.Namespace) -> int:
    from edge_inspect.sinks.record_store import RecordStoreError
    from edge_inspect.training.labelling import label_result

    try:
        outcome = label_result(Path(args.db), args.result_id, args.label, args.by, args.note)
    except RecordStoreError as exc:
        print(f"edge-inspect label: {exc}")
        return 2
    print(json.dumps(outcome))
    return 0
