"""Labels: a person confirms or corrects a verdict (`edge-inspect label`); it lands in the record store.

Labels feed retraining. The operator page will call `label_result` too, so there is one way to label.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def label_result(
    db: Path, result_id: str, label: str, labelled_by: str, note: str | None = None
) -> dict[str, Any]:
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
