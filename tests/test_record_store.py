from __future__ import annotations

import argparse
import json
import sqlite3
import threading
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_inspect.bus.contracts import Defect, InspectionResult, ModelRef, StageTimings
from edge_inspect.cli import records as records_cli
from edge_inspect.sinks.record_store import SCHEMA_VERSION, RecordStore, RecordStoreError

MODEL = ModelRef(name="elpv-cls", version="1.2.0", sha256="ab" * 32)
T0 = 1_714_564_800_000_000_000  # 2024-05-01T12:00:00Z


def make_result(
    seq: int,
    camera_id: str = "cam1",
    verdict: str = "OK",
    part_id: str | None = None,
    t_capture_ns: int | None = None,
    image_path: str | None = None,
) -> InspectionResult:
    return InspectionResult(
        camera_id=camera_id,
        seq=seq,
        part_id=part_id if part_id is not None else f"P{seq:04d}",
        station="st-1",
        t_capture_ns=t_capture_ns if t_capture_ns is not None else T0 + seq * 1_000_000_000,
        verdict=verdict,
        score=0.1 + seq / 1000,
        threshold=0.5,
        defects=[Defect(cls="crack", score=0.93, bbox=(3, 4, 50, 60), area_px=812)]
        if verdict == "NG"
        else [],
        model=MODEL,
        timings_ms=StageTimings(decode=0.4, preprocess=1.25, infer=6.5, postprocess=0.3, total=11.0),
        image_path=image_path,
    )


@pytest.fixture
def store(tmp_path: Path) -> RecordStore:
    with RecordStore(tmp_path / "records.db", tmp_path / "images") as opened:
        yield opened


def test_result_round_trip_equals_original(store: RecordStore) -> None:
    original = make_result(1, verdict="NG", image_path="/data/x.png")
    store.add_results([original], with_outbox=False)
    assert store.get(original.result_id) == original
    assert store.get("no-such-id") is None


def test_query_filters_and_newest_first(store: RecordStore) -> None:
    results = [
        make_result(1, camera_id="cam1", verdict="OK"),
        make_result(2, camera_id="cam2", verdict="NG"),
        make_result(3, camera_id="cam1", verdict="REVIEW", part_id="P0001"),
        make_result(4, camera_id="cam2", verdict="NG"),
    ]
    store.add_results(results, with_outbox=False)

    assert [r.seq for r in store.query()] == [4, 3, 2, 1]
    assert [r.seq for r in store.query(part_id="P0001")] == [3, 1]
    assert [r.seq for r in store.query(camera_id="cam2")] == [4, 2]
    assert [r.seq for r in store.query(verdict="NG")] == [4, 2]
    assert [r.seq for r in store.query(camera_id="cam2", verdict="NG", limit=1)] == [4]
    # since is inclusive, until exclusive.
    since, until = results[1].t_capture_ns, results[3].t_capture_ns
    assert [r.seq for r in store.query(since_ns=since, until_ns=until)] == [3, 2]
    assert store.counts_by_verdict() == {"OK": 1, "NG": 2, "REVIEW": 1}
    with pytest.raises(RecordStoreError, match="verdict"):
        store.query(verdict="BAD")


def test_add_is_idempotent_and_queues_outbox_once(store: RecordStore) -> None:
    first = make_result(1)
    store.add_results([first, make_result(2)], with_outbox=True)
    # Re-sent after a crash, even with a changed body: the recorded version stands, no second delivery.
    store.add_results([replace(first, score=0.99), make_result(3)], with_outbox=True)

    assert store.counts_by_verdict()["OK"] == 3
    assert store.get(first.result_id) == first
    assert store.outbox_counts() == {"pending": 3, "delivered": 0, "dead": 0}
    item = store.outbox_item(first.result_id)
    assert item is not None and InspectionResult.from_dict(json.loads(item.payload)) == first


def test_results_and_outbox_commit_together(store: RecordStore) -> None:
    doomed = make_result(2)
    # A trigger makes the second outbox insert fail half-way through the batch.
    side = sqlite3.connect(store.db_path)
    side.execute(
        "CREATE TRIGGER fail_outbox BEFORE INSERT ON outbox "
        f"WHEN NEW.result_id = '{doomed.result_id}' BEGIN SELECT RAISE(ABORT, 'simulated failure'); END"
    )
    side.commit()
    with pytest.raises(sqlite3.DatabaseError, match="simulated failure"):
        store.add_results([make_result(1), doomed, make_result(3)], with_outbox=True)
    assert store.query() == []
    assert side.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 0
    assert store.outbox_counts() == {"pending": 0, "delivered": 0, "dead": 0}

    side.execute("DROP TRIGGER fail_outbox")
    side.commit()
    side.close()
    store.add_results([make_result(1), doomed], with_outbox=True)
    assert store.outbox_counts()["pending"] == 2


def test_outbox_state_changes(store: RecordStore) -> None:
    results = [make_result(i) for i in range(3)]
    store.add_results(results, with_outbox=True, now_ns=1000)
    assert store.due_deliveries(now_ns=999, limit=10) == []
    due = store.due_deliveries(now_ns=1000, limit=10)
    assert [item.result_id for item in due] == [r.result_id for r in results]

    store.mark_delivered([due[0].id], now_ns=2000)
    store.mark_retry(due[1].id, "HTTP 503", next_attempt_ns=5000)
    store.mark_dead(due[2].id, "HTTP 400: bad part id")
    assert store.outbox_counts() == {"pending": 1, "delivered": 1, "dead": 1}
    assert store.count_pending() == 1
    assert store.next_due_ns() == 5000
    assert store.due_deliveries(now_ns=4999, limit=10) == []
    retried = store.outbox_item(results[1].result_id)
    assert retried is not None and (retried.attempts, retried.last_error) == (1, "HTTP 503")
    delivered = store.outbox_item(results[0].result_id)
    assert delivered is not None and (delivered.state, delivered.delivered_ns) == ("delivered", 2000)

    assert store.requeue_dead([results[2].result_id], now_ns=6000) == 1
    revived = store.outbox_item(results[2].result_id)
    assert revived is not None and (revived.state, revived.attempts, revived.next_attempt_ns) == (
        "pending",
        0,
        6000,
    )


def test_labels_latest_wins_and_unknown_result_refused(store: RecordStore) -> None:
    result = make_result(1, verdict="REVIEW")
    store.add_results([result], with_outbox=False)
    store.add_label(result.result_id, "OK", labelled_by="anna", labelled_ns=10)
    store.add_label(result.result_id, "NG", labelled_by="ben", note="hairline crack", labelled_ns=20)

    assert [(lb.label, lb.labelled_by) for lb in store.labels(latest_only=False)] == [
        ("OK", "anna"),
        ("NG", "ben"),
    ]
    [latest] = store.labels()
    assert (latest.label, latest.note, latest.source) == ("NG", "hairline crack", "operator")
    with pytest.raises(RecordStoreError, match="no such result"):
        store.add_label("cam9:1:1", "OK", labelled_by="anna")
    with pytest.raises(RecordStoreError, match="label"):
        store.add_label(result.result_id, "MAYBE", labelled_by="anna")


def test_archive_image_is_lossless_and_readable(store: RecordStore, tmp_path: Path) -> None:
    result = make_result(7, camera_id="line/3")
    rng = np.random.default_rng(0)
    colour = rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    path = Path(store.archive_image(result, colour))

    assert path.parent.parent == tmp_path / "images" / "2024-05-01"
    assert path.is_relative_to(tmp_path / "images")  # the "/" in the camera id made no extra directory
    assert path.suffix == ".png" and not list(path.parent.glob("*.tmp"))
    np.testing.assert_array_equal(cv2.imread(str(path), cv2.IMREAD_UNCHANGED), colour)

    deep = rng.integers(0, 65536, size=(32, 40), dtype=np.uint16)
    mono_path = store.archive_image(make_result(8), deep)
    np.testing.assert_array_equal(cv2.imread(mono_path, cv2.IMREAD_UNCHANGED), deep)

    recorded = replace(result, image_path=str(path))
    store.add_results([recorded], with_outbox=False)
    assert store.get(result.result_id).image_path == str(path)


def test_archive_image_needs_image_dir(tmp_path: Path) -> None:
    with RecordStore(tmp_path / "r.db") as reader, pytest.raises(RecordStoreError, match="image_dir"):
        reader.archive_image(make_result(1), np.zeros((4, 4), np.uint8))


def test_reopen_keeps_everything(tmp_path: Path) -> None:
    db = tmp_path / "records.db"
    results = [make_result(i, verdict="NG" if i % 2 else "OK") for i in range(5)]
    with RecordStore(db, tmp_path / "img") as writer:
        writer.add_results(results, with_outbox=True)
        writer.add_label(results[1].result_id, "OK", labelled_by="anna")
        assert sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0] == "wal"

    with RecordStore(db) as reopened:
        assert reopened.query(limit=10) == list(reversed(results))
        assert reopened.outbox_counts()["pending"] == 5
        assert [lb.result_id for lb in reopened.labels()] == [results[1].result_id]


def test_reader_sees_writer_commits_through_separate_connections(tmp_path: Path) -> None:
    db = tmp_path / "records.db"
    with RecordStore(db) as writer, RecordStore(db) as reader:
        assert reader.query() == []
        writer.add_results([make_result(1)], with_outbox=True)
        assert [r.seq for r in reader.query()] == [1]


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "records.db"
    RecordStore(db).close()
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(RecordStoreError, match=rf"schema version {SCHEMA_VERSION + 1}.*upgrade edge-inspect"):
        RecordStore(db)


def test_foreign_database_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "other.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE results (x)")
    conn.commit()
    conn.close()
    with pytest.raises(RecordStoreError, match="not a record store"):
        RecordStore(db)


def records_args(db: Path, *argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="edge-inspect")
    records_cli.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["records", "--db", str(db), *argv])


def test_records_command_table_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "records.db"
    with RecordStore(db) as store:
        store.add_results(
            [
                make_result(1, camera_id="cam1", image_path="/img/a.png"),
                make_result(2, camera_id="cam2", verdict="NG"),
                make_result(3, camera_id="cam1", verdict="NG", image_path="/img/c.png"),
            ],
            with_outbox=False,
        )

    args = records_args(db, "--camera", "cam1")
    assert args.handler(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["time", "camera", "part", "verdict", "score", "model", "image"]
    assert [line.split()[1:4] for line in lines[1:]] == [["cam1", "P0003", "NG"], ["cam1", "P0001", "OK"]]
    assert lines[1].split()[-2:] == ["1.2.0", "/img/c.png"]

    args = records_args(db, "--verdict", "NG", "--since", "2024-05-01T12:00:02Z", "--json")
    assert args.handler(args) == 0
    printed = [InspectionResult.from_dict(json.loads(line)) for line in capsys.readouterr().out.splitlines()]
    assert [(r.camera_id, r.seq) for r in printed] == [("cam1", 3), ("cam2", 2)]

    args = records_args(db, "--until", "2024-05-01T14:00:02+02:00", "--json")
    assert args.handler(args) == 0
    assert [json.loads(line)["seq"] for line in capsys.readouterr().out.splitlines()] == [1]


def test_records_command_requeues_dead(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "records.db"
    with RecordStore(db) as store:
        store.add_results([make_result(1), make_result(2)], with_outbox=True)
        for item in store.due_deliveries(now_ns=T0 * 2, limit=10):
            store.mark_dead(item.id, "HTTP 422")
    args = records_args(db, "--dead", "--json")
    assert args.handler(args) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(d["result_id"], d["last_error"]) for d in listed] == [
        (make_result(1).result_id, "HTTP 422"),
        (make_result(2).result_id, "HTTP 422"),
    ]
    args = records_args(db, "--dead")
    assert args.handler(args) == 0
    assert "2 dead letters; redeliver with --requeue-dead" in capsys.readouterr().out
    args = records_args(db, "--requeue-dead")
    assert args.handler(args) == 0
    assert "requeued 2" in capsys.readouterr().out
    with RecordStore(db) as store:
        assert store.outbox_counts() == {"pending": 2, "delivered": 0, "dead": 0}


def test_records_command_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = records_args(tmp_path / "missing.db")
    assert args.handler(args) == 2
    assert "no record store" in capsys.readouterr().err
    assert not (tmp_path / "missing.db").exists()
    with pytest.raises(SystemExit):
        records_args(tmp_path / "missing.db", "--since", "yesterday")


def test_archive_names_stay_within_file_system_limits_for_any_id(store: RecordStore) -> None:
    image = np.zeros((4, 4), np.uint8)
    long_ids = ["😀" * 40, "😀" * 40 + "x", "検" * 100, "a" * 300]
    paths = [
        Path(store.archive_image(make_result(i, camera_id=camera), image))
        for i, camera in enumerate(long_ids)
    ]
    assert all(path.is_file() for path in paths)
    assert all(len(part.encode()) <= 255 for path in paths for part in path.parts)
    assert len({path.parent for path in paths}) == len(long_ids)  # distinct ids stay distinct


def test_many_connections_may_create_the_store_at_once(tmp_path: Path) -> None:
    # The inspector's stages, its MES deliverer and its outputs all open the store as they start; the
    # first opener switching a new file to WAL once made the others fail with "database is locked".
    for trial in range(10):
        db = tmp_path / f"records-{trial}.sqlite"
        errors: list[BaseException] = []

        def open_store(db: Path = db, errors: list[BaseException] = errors) -> None:
            try:
                RecordStore(db).close()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=open_store) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
