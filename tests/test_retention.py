"""Retention: the image archive pruned by age and size, old settled records deleted, nothing else."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from edge_inspect.sinks.record_store import RecordStore
from edge_inspect.sinks.retention import RetentionPolicy, day_directories, days_to_remove, free_bytes, prune
from tests.test_record_store import make_result

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
DAY = timedelta(days=1)


def at(days_ago: float) -> int:
    return int((NOW - days_ago * DAY).timestamp() * 1e9)


def test_days_to_remove_by_age_then_by_size() -> None:
    days = [(NOW.replace(hour=0) - n * DAY, 100) for n in (5, 3, 2, 0)]  # oldest first
    assert days_to_remove(days, NOW, None, None) == 0
    assert days_to_remove(days, NOW, 2.0, None) == 2  # 5 and 3 days ago ended more than 2 days ago
    assert days_to_remove(days, NOW, None, 250) == 2
    assert days_to_remove(days, NOW, 30.0, 0) == 4
    assert days_to_remove([], NOW, 1.0, 0) == 0


def test_prune_removes_old_days_and_clears_their_image_paths(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "records.sqlite", tmp_path / "images")
    image = np.full((16, 16), 200, np.uint8)
    results = []
    for seq, days_ago in enumerate((10, 10, 4, 0)):
        result = dataclasses.replace(make_result(seq=seq, t_capture_ns=at(days_ago)), result_id="")
        result = dataclasses.replace(result, image_path=store.archive_image(result, image))
        results.append(result)
    store.add_results(results, with_outbox=False)
    (tmp_path / "images" / "notes").mkdir()  # not an archive day: left alone

    report = prune(store, tmp_path / "images", RetentionPolicy(images_max_age_days=7), NOW)

    assert report.image_days_removed == 1 and report.image_bytes_removed > 0
    assert [day.strftime("%Y-%m-%d") for day, _ in day_directories(tmp_path / "images")] == [
        "2026-11-27",
        "2026-12-01",
    ]
    assert (tmp_path / "images" / "notes").is_dir()
    kept = {r.seq: r.image_path for r in store.query(limit=10)}
    assert kept[0] is None and kept[1] is None and kept[2] and kept[3]
    assert Path(kept[3]).is_file()

    report = prune(store, tmp_path / "images", RetentionPolicy(images_max_bytes=1), NOW)
    assert report.image_days_removed == 2 and day_directories(tmp_path / "images") == []
    assert len(store.query(limit=10)) == 4  # the records stay: verdicts are the traceability
    store.close()


def test_old_records_go_only_when_delivered_and_unlabelled(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "records.sqlite")
    old = [dataclasses.replace(make_result(seq=seq, t_capture_ns=at(40)), result_id="") for seq in range(4)]
    recent = dataclasses.replace(make_result(seq=9, t_capture_ns=at(1)), result_id="")
    store.add_results([*old, recent], with_outbox=True, now_ns=at(40))
    due = {item.result_id: item.id for item in store.due_deliveries(at(0), 10)}
    store.mark_delivered([due[old[0].result_id], due[old[1].result_id], due[recent.result_id]], at(0))
    store.add_label(old[1].result_id, "NG", "qe-anna")  # labelled: training data, kept

    removed = prune(store, tmp_path / "images", RetentionPolicy(records_max_age_days=30), NOW).records_removed

    assert removed == 1
    left = {r.result_id for r in store.query(limit=10)}
    assert left == {old[1].result_id, old[2].result_id, old[3].result_id, recent.result_id}
    assert store.outbox_counts() == {"pending": 2, "delivered": 2, "dead": 0}
    store.close()


def test_free_bytes_reads_the_nearest_existing_folder(tmp_path: Path) -> None:
    assert free_bytes(tmp_path / "not" / "yet" / "made") == free_bytes(tmp_path) > 0
