"""The inspector in-process: every accepted frame becomes exactly one recorded, published result."""

from __future__ import annotations

import dataclasses
import json
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import zmq

from edge_inspect.bus.contracts import FrameHeader, InspectionResult
from edge_inspect.bus.transport import FrameSender
from edge_inspect.inspector.receive import ReceivedFrame
from edge_inspect.inspector.rules import QualityRules
from edge_inspect.inspector.service import Inspector, summarise
from edge_inspect.inspector.stages.base import Tally, merge_tallies
from edge_inspect.inspector.stages.infer import judge
from edge_inspect.inspector.stages.prepare import PreparedBatch
from edge_inspect.inspector.stages.receive import SeqTracker
from edge_inspect.inspector.stages.record import should_archive
from edge_inspect.sinks.record_store import RecordStore, heat_map_path
from tests.helpers import MesReceiver, loopback_config, wait_until
from tests.toy_models import make_toy_package


def send(sender: FrameSender, seq: int, brightness: int, encoding: str = "raw", camera: str = "cam1") -> None:
    image = np.full((40, 60), brightness, np.uint8)
    payload = image if encoding == "raw" else cv2.imencode(".jpg", image)[1].tobytes()
    header = FrameHeader(camera, seq, "st1", 0, 60, 40, 1, "uint8", encoding, part_id=f"p{seq}")
    sender.send(header, payload)


def test_inspector_judges_records_publishes_and_delivers(toy_map_model_dir: Path, tmp_path: Path) -> None:
    mes = MesReceiver()
    config = loopback_config(
        tmp_path,
        {
            "model.package": toy_map_model_dir,
            "bus.results": "tcp://127.0.0.1:*",
            "metrics.port": 0,
            "mes.url": mes.url,
            "batching.max_batch": 4,
        },
    )
    inspector = Inspector(config)
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(inspector.results_endpoint)
    published: list[InspectionResult] = []
    try:
        inspector.start()
        sender = FrameSender(inspector.receiver.endpoint, context=ctx)
        for seq in range(6):
            send(sender, seq, 250 if seq % 2 else 10)  # odd parts are bright: NG for the toy model
        send(sender, 8, 250, encoding="jpeg")  # seqs 6 and 7 never sent: two frames lost upstream
        rogue = ctx.socket(zmq.DEALER)  # a misbehaving client that ignores the contract
        rogue.connect(inspector.receiver.endpoint)
        rogue.send_multipart([b"{broken", b""])
        header = FrameHeader("cam2", 0, "st1", 0, 60, 40, 1, "uint8", "jpeg")
        rogue.send_multipart([header.to_bytes(), b"\xff\xd8 truncated"])
        rogue.close(linger=1000)
        wait_until(lambda: inspector.summary()["inspected"] == 7, 20, "7 results")
        while sub.poll(2000):
            published.append(InspectionResult.from_dict(json.loads(sub.recv_multipart()[1])))
            if len(published) == 7:
                break
        wait_until(lambda: len(set(mes.keys)) == 7, 20, "7 MES deliveries")
        metrics_text = (
            urllib.request.urlopen(f"http://127.0.0.1:{inspector.metrics_server.port}/metrics", timeout=5)
            .read()
            .decode()
        )
        sender.close()
    finally:
        inspector.stop()
        sub.close()
        ctx.term()
        mes.close()

    summary = inspector.summary()
    assert summary["inspected_by_verdict"] == {"OK": 3, "NG": 4, "REVIEW": 0}
    assert summary["malformed_by_reason"] == {"bad_json": 1, "corrupt_jpeg": 1}
    assert summary["dropped_by_reason"] == {"seq_gap": 2}
    store = RecordStore(tmp_path / "records.sqlite")
    try:
        records = {r.seq: r for r in store.query(limit=100)}
    finally:
        store.close()
    assert sorted(records) == [0, 1, 2, 3, 4, 5, 8]
    assert {r.result_id for r in published} == {r.result_id for r in records.values()}
    ng = records[1]
    assert ng.verdict == "NG" and ng.part_id == "p1" and ng.model.name == "toy-brightness-map"
    assert ng.defects and ng.defects[0].bbox == (0, 0, 60, 40) and ng.defects[0].area_px == 2400
    assert ng.image_path and Path(ng.image_path).is_file()
    assert cv2.imread(ng.image_path, cv2.IMREAD_UNCHANGED).shape[:2] == (40, 60)
    # Its anomaly map beside it, as a heat map of the frame's size (the toy map is the brightness: NG parts
    # are bright all over, so over the threshold everywhere).
    heat = cv2.imread(str(heat_map_path(Path(ng.image_path))), cv2.IMREAD_UNCHANGED)
    assert heat.shape == (40, 60) and heat.dtype == np.uint8 and heat.min() >= 128
    assert records[0].verdict == "OK" and records[0].image_path is None
    assert all(r.timings_ms.total >= r.timings_ms.infer >= 0 for r in records.values())
    assert mes.bodies[ng.result_id]["verdict"] == "NG"
    assert 'edgeinspect_frames_inspected_total{camera="cam1",verdict="NG"} 4.0' in metrics_text
    assert 'edgeinspect_malformed_messages_total{reason="corrupt_jpeg"} 1.0' in metrics_text


def test_graceful_stop_drains_every_accepted_frame(toy_model_dir: Path, tmp_path: Path) -> None:
    config = loopback_config(
        tmp_path,
        {"model.package": toy_model_dir, "batching.max_batch": 2, "batching.queue_depth": 64},
    )
    inspector = Inspector(config)
    inspector.start()
    sender = FrameSender(inspector.receiver.endpoint)
    for seq in range(40):
        send(sender, seq, 128)
    wait_until(lambda: inspector.summary()["received"] == 40, 20, "40 frames received")
    inspector.stop()  # some are still queued: they must be judged before stop returns
    sender.close()
    summary = inspector.summary()
    assert summary["inspected"] == 40 and summary["dropped"] == 0
    store = RecordStore(tmp_path / "records.sqlite")
    try:
        assert sum(store.counts_by_verdict().values()) == 40
    finally:
        store.close()


def test_a_batch_that_fails_to_preprocess_is_judged_review_and_the_line_goes_on(tmp_path: Path) -> None:
    # The recipe crops 60x40 frames; a camera sending smaller ones makes preprocessing raise.
    model_dir = make_toy_package(tmp_path / "roi-model", roi=(0, 0, 60, 40))
    config = loopback_config(tmp_path, {"model.package": model_dir, "metrics.port": 0})
    small = np.full((20, 30), 250, np.uint8)
    with Inspector(config) as inspector:
        sender = FrameSender(inspector.receiver.endpoint)
        for seq in range(3):
            sender.send(FrameHeader("small", seq, "st1", 0, 30, 20, 1, "uint8", "raw"), small)
        wait_until(lambda: inspector.summary()["inspected"] == 3, 20, "3 results for the failing camera")
        for seq in range(3):
            send(sender, seq, 250)
        wait_until(lambda: inspector.summary()["inspected"] == 6, 20, "3 more results after the failure")
        metrics_text = (
            urllib.request.urlopen(f"http://127.0.0.1:{inspector.metrics_server.port}/metrics", timeout=5)
            .read()
            .decode()
        )
        sender.close()
    store = RecordStore(tmp_path / "records.sqlite")
    try:
        records = store.query(limit=100)
    finally:
        store.close()
    failed = [r for r in records if r.camera_id == "small"]
    assert [r.verdict for r in failed] == ["REVIEW"] * 3
    assert all(r.defects[0].cls == "preprocess_error" for r in failed)
    assert sorted(r.verdict for r in records if r.camera_id == "cam1") == ["NG"] * 3
    assert 'edgeinspect_stage_errors_total{stage="preprocess"}' in metrics_text


def test_seq_tracker_and_archive_sampling() -> None:
    tracker = SeqTracker()
    assert [tracker.gap("a", s) for s in (0, 1, 4, 5, 0, 2)] == [0, 0, 2, 0, 0, 1]
    assert tracker.gap("b", 10) == 0
    results = [
        InspectionResult.from_dict(
            {
                "camera_id": "c",
                "seq": i,
                "part_id": None,
                "station": "s",
                "t_capture_ns": i,
                "verdict": "OK",
                "score": 0.1,
                "threshold": 0.5,
                "defects": [],
                "model": {"name": "m", "version": "1", "sha256": "x"},
                "timings_ms": {},
                "image_path": None,
                "v": 1,
                "result_id": "",
            }
        )
        for i in range(2000)
    ]
    sampled = sum(should_archive(r, 0.1) for r in results)
    assert 150 < sampled < 250
    assert not any(should_archive(r, 0.0) for r in results)


def test_summary_is_made_from_the_stages_own_counts() -> None:
    receive, prepare, record = Tally(), Tally(), Tally()
    receive.add("received", count=5)
    receive.add("dropped", "seq_gap", 2)
    receive.add("malformed", "bad_json")
    prepare.add("malformed", "corrupt_jpeg")
    record.add("inspected", "OK", 3)
    record.add("inspected", "NG")
    card = SimpleNamespace(name="m", version="7")
    summary = summarise(merge_tallies([receive, prepare, record]), SimpleNamespace(provider="cpu", card=card))
    assert summary == {
        "received": 5,
        "inspected": 4,
        "inspected_by_verdict": {"OK": 3, "NG": 1, "REVIEW": 0},
        "dropped": 2,
        "dropped_by_reason": {"seq_gap": 2},
        "malformed": 2,
        "malformed_by_reason": {"bad_json": 1, "corrupt_jpeg": 1},
        "provider": "cpu",
        "model": "m:7",
    }


def test_a_failing_stage_makes_every_frame_of_its_batch_review_naming_the_stage() -> None:
    frames = [
        ReceivedFrame(FrameHeader("cam", seq, "st", 0, 4, 2, 1), memoryview(bytes(8)), 1_000_000)
        for seq in range(3)
    ]
    images = [np.zeros((2, 4, 1), np.uint8)] * 3
    card = SimpleNamespace(name="m", version="1")
    active = SimpleNamespace(card=card, ref=None, device="cpu")
    prepared = PreparedBatch(active, frames, images, [0.1] * 3, np.zeros((3, 1, 2, 4)), 0.5, 2_000_000)

    def lost(active: object, inputs: object) -> dict:
        raise RuntimeError("device lost")

    judged = judge(prepared, lost, QualityRules())
    assert judged.failed_stage == "infer" and "device lost" in (judged.error or "")
    assert [j.verdict for j in judged.judgements] == ["REVIEW"] * 3
    assert {j.defects[0].cls for j in judged.judgements} == {"infer_error"}
    failed = dataclasses.replace(prepared, failure="RuntimeError('bad crop')")
    judged = judge(failed, lost, QualityRules())
    assert judged.failed_stage == "preprocess"
    assert {j.defects[0].cls for j in judged.judgements} == {"preprocess_error"}
