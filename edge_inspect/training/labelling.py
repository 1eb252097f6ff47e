"""`edge-inspect label`: a person confirms or corrects a verdict; the label lands in the record store.

Labels feed retraining. The operator page will call `label_result` too, so there is one way to label.
"""

from __future__ import annotations

import argparse
import getpass
import json
from pathlib import Path


def label_result(db: Path, result_id: str, label: str, labelled_by: str, note: str | None = None) -> dict:
    """Record the label and return what was recorded, with the verdict it confirms or corrects."""
    from edge_inspect.sinks.record_store import RecordStore

    with RecordStore(db) as store:
        result = store.get(result_id)
        recorded = store.add_label(result_id, label, labelled_by, note)
    return {
        "result_id": result_id,
        "label": recorded.label,
        "verdict": result.verdict if result else None,
        "action": "confirmed" if result and result.verdict == label else "corrected",
        "labelled_by": recorded.labelled_by,
    }


def _cli(args: argparse.Namespace) -> int:
    from edge_inspect.sinks.record_store import RecordStoreError

    try:
        outcome = label_result(Path(args.db), args.result_id, args.label, args.by, args.note)
    except RecordStoreError as exc:
        print(f"edge-inspect label: {exc}")
        return 2
    print(json.dumps(outcome))
    return 0


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
    p.set_defaults(handler=_cli)
