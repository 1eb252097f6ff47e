from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_inspect.bus.contracts import InspectionResult, ModelRef, StageTimings
from edge_inspect.cli import main
from edge_inspect.sinks.record_store import RecordStore


def test_label_confirms_or_corrects_and_the_latest_label_wins(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    db = tmp_path / "records.sqlite"
    result = InspectionResult(
        "cam", 1, "part-1", "st", 5, "REVIEW", 0.52, 0.5, [], ModelRef("m", "1", "x"), StageTimings()
    )
    with RecordStore(db) as store:
        store.add_results([result], with_outbox=False)
    assert main(["label", result.result_id, "NG", "--db", str(db), "--by", "ana", "--note", "crack"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "result_id": result.result_id,
        "label": "NG",
        "verdict": "REVIEW",
        "action": "corrected",
        "labelled_by": "ana",
    }
    assert main(["label", result.result_id, "OK", "--db", str(db), "--by", "bo"]) == 0
    with RecordStore(db) as store:
        labels = store.labels()
    assert [(label.label, label.labelled_by) for label in labels] == [("OK", "bo")]
    assert main(["label", "no-such-id", "OK", "--db", str(db)]) == 2
    assert "no such result" in capsys.readouterr().out
