"""The line never stops silently: probes, stuck and crashed stages, a refusing database or disk, bounded
stops, the camera-id cap, authenticated cameras and trusted models, all on a real inspector."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_inspect.bus.contracts import FrameHeader
from edge_inspect.bus.security import ClientKeys, write_key_pair
from edge_inspect.bus.transport import FrameSender
from edge_inspect.inspector.service import Inspector, StageCrashed, run_until_signalled
from edge_inspect.models.package import ModelPackageError
from edge_inspect.models.registry import promote, publish
from edge_inspect.models.signing import load_private_key, sign_card, write_signing_key
from edge_inspect.sinks.record_store import RecordStore
from tests.helpers import loopback_config, wait_until
from tests.toy_models import make_toy_package


def send(sender: FrameSender, seq: int, camera: str = "cam1", brightness: int = 30) -> None:
    image = np.full((32, 32), brightness, np.uint8)
    sender.send(FrameHeader(camera, seq, "st1", time.time_ns(), 32, 32, 1), image)


def probe(inspector: Inspector, path: str) -> tuple[int, dict[str, Any]]:
    url = f"http://127.0.0.1:{inspector.metrics_server.port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


class SlowModel:
    """Wraps the served model; sleeps `seconds` on every batch while `slow` is set."""

    def __init__(self, model: Any, seconds: float) -> None:
        self.model, self.seconds, self.slow = model, seconds, threading.Event()
        self.provider = model.provider

    def run(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
        if self.slow.is_set():
            time.sleep(self.seconds)
        return self.model.run(inputs)


def test_probes_report_ready_and_healthy_then_a_stuck_stage(toy_model_dir: Path, tmp_path: Path) -> None:
    config = loopback_config(
        tmp_path,
        {
            "model.package": toy_model_dir,
            "metrics.port": 0,
            "metrics.stall_s": 0.5,
            "inference.frame_path": "host",
        },
    )
    with Inspector(config) as inspector:
        assert probe(inspector, "/healthz") == (
            200,
            {"ok": True, "checks": dict.fromkeys(("receive", "prepare", "infer", "record"), "ok")},
        )
        status, ready = probe(inspector, "/readyz")
        assert status == 200 and set(ready["checks"]) == {"model", "bus", "store", "disk"}
        slow = SlowModel(inspector.active.model, 2.0)
        inspector.active = dataclasses.replace(inspector.active, model=slow)
        slow.slow.set()
        with FrameSender(inspector.receiver.endpoint) as sender:
            send(sender, 0)
            wait_until(lambda: probe(inspector, "/healthz")[0] == 503, 10, "the stuck infer stage reported")
            status, health = probe(inspector, "/healthz")
            assert health["checks"]["infer"].startswith("stuck on one item for")
            assert probe(inspector, "/readyz")[0] == 503
            slow.slow.clear()
            wait_until(lambda: inspector.summary()["inspected"] == 1, 10, "the part judged once unstuck")
        assert probe(inspector, "/healthz")[0] == 200


def test_readiness_fails_when_the_disk_is_nearly_full(toy_model_dir: Path, tmp_path: Path) -> None:
    config = loopback_config(
        tmp_path, {"model.package": toy_model_dir, "metrics.port": 0, "metrics.min_free_disk_mb": 1e12}
    )
    with Inspector(config) as inspector:
        status, ready = probe(inspector, "/readyz")
    assert status == 503 and "MiB free, below" in ready["checks"]["disk"]


def test_a_refusing_database_is_retried_until_every_result_is_written(
    toy_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_add = RecordStore.add_results
    failures = {"left": 3}

    def flaky(self: RecordStore, *args: Any, **kwargs: Any) -> None:
        if failures["left"]:
            failures["left"] -= 1
            raise sqlite3.OperationalError("database or disk is full")
        real_add(self, *args, **kwargs)

    monkeypatch.setattr(RecordStore, "add_results", flaky)
    monkeypatch.setattr("edge_inspect.inspector.stages.record.RETRY_INITIAL_S", 0.2)
    config = loopback_config(tmp_path, {"model.package": toy_model_dir, "metrics.port": 0})
    with Inspector(config) as inspector, FrameSender(inspector.receiver.endpoint) as sender:
        for seq in range(5):
            send(sender, seq)
        wait_until(lambda: probe(inspector, "/readyz")[1]["checks"]["store"] != "ok", 10, "store reported")
        wait_until(lambda: inspector.summary()["inspected"] == 5, 20, "every part written after the retries")
        assert probe(inspector, "/readyz")[0] == 200
    with RecordStore(config.db_path) as store:
        assert len(store.query(limit=10)) == 5


def test_an_image_that_cannot_be_archived_makes_its_part_review(
    toy_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(self: RecordStore, *args: Any) -> str:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(RecordStore, "archive_image", disk_full)
    config = loopback_config(tmp_path, {"model.package": toy_model_dir})
    with Inspector(config) as inspector, FrameSender(inspector.receiver.endpoint) as sender:
        send(sender, 0, brightness=250)  # NG: its image is archived, or should be
        send(sender, 1, brightness=10)  # OK: not archived, unaffected
        wait_until(lambda: inspector.summary()["inspected"] == 2, 20, "both parts recorded")
    with RecordStore(config.db_path) as store:
        results = {r.seq: r for r in store.query(limit=10)}
    assert results[0].verdict == "REVIEW" and [d.cls for d in results[0].defects][-1] == "archive_failed"
    assert results[0].image_path is None and results[1].verdict == "OK"


def test_a_crashed_stage_makes_the_service_exit(
    toy_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: RecordStore, *args: Any, **kwargs: Any) -> None:
        raise ValueError("a bug nobody foresaw")

    monkeypatch.setattr(RecordStore, "add_results", broken)
    config = loopback_config(tmp_path, {"model.package": toy_model_dir, "bus.bind": "tcp://127.0.0.1:*"})
    endpoint: dict[str, str] = {}
    real_start = Inspector.start

    def start_and_feed(self: Inspector) -> None:
        real_start(self)
        endpoint["bus"] = self.receiver.endpoint

        def feed() -> None:
            with FrameSender(endpoint["bus"]) as sender:
                send(sender, 0)

        threading.Thread(target=feed, daemon=True).start()

    monkeypatch.setattr(Inspector, "start", start_and_feed)
    started = time.monotonic()
    with pytest.raises(StageCrashed, match="record"):
        run_until_signalled(config, seconds=30)
    assert time.monotonic() - started < 15


def test_stop_is_bounded_when_a_stage_hangs(toy_model_dir: Path, tmp_path: Path) -> None:
    inspector = Inspector(loopback_config(tmp_path, {"model.package": toy_model_dir}))
    slow = SlowModel(inspector.active.model, 5.0)
    slow.slow.set()
    inspector.active = dataclasses.replace(inspector.active, model=slow)
    inspector.start()
    with FrameSender(inspector.receiver.endpoint) as sender:
        send(sender, 0)
        wait_until(lambda: inspector.infer.stalled_s() > 0, 10, "inference under way")
    started = time.monotonic()
    assert inspector.stop(timeout_s=0.5) is False
    assert time.monotonic() - started < 3


def test_only_max_cameras_distinct_ids_are_kept(toy_model_dir: Path, tmp_path: Path) -> None:
    config = loopback_config(tmp_path, {"model.package": toy_model_dir, "bus.max_cameras": 2})
    with Inspector(config) as inspector, FrameSender(inspector.receiver.endpoint) as sender:
        for seq, camera in enumerate(("cam-a", "cam-b", "cam-c", "cam-a", "cam-d")):
            send(sender, seq, camera=camera)
        wait_until(
            lambda: inspector.summary()["inspected"] + inspector.summary()["malformed"] == 5, 20, "all"
        )
        summary = inspector.summary()
    assert summary["inspected"] == 3 and summary["malformed_by_reason"] == {"too_many_cameras": 2}


def test_an_authenticated_bus_judges_allowed_cameras_only(toy_model_dir: Path, tmp_path: Path) -> None:
    write_key_pair(tmp_path / "inspector-keys", "inspector")
    for name in ("cam-1", "rogue"):
        write_key_pair(tmp_path / "camera-keys", name)
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "cam-1.key").write_bytes((tmp_path / "camera-keys" / "cam-1.key").read_bytes())
    config = loopback_config(
        tmp_path / "work",
        {
            "model.package": toy_model_dir,
            "bus.curve_secret_key": tmp_path / "inspector-keys" / "inspector.key_secret",
            "bus.allowed_keys_dir": allowed,
        },
    )
    server_key = tmp_path / "inspector-keys" / "inspector.key"
    with Inspector(config) as inspector:
        endpoint = inspector.receiver.endpoint
        with (
            FrameSender(
                endpoint, "latest", keys=ClientKeys(tmp_path / "camera-keys" / "cam-1.key_secret", server_key)
            ) as good,
            FrameSender(
                endpoint, "latest", keys=ClientKeys(tmp_path / "camera-keys" / "rogue.key_secret", server_key)
            ) as bad,
            FrameSender(endpoint, "latest") as plain,
        ):
            for seq in range(3):
                send(good, seq, camera="cam-1")
                send(bad, seq, camera="rogue")
                send(plain, seq, camera="plain")
                time.sleep(0.1)
            wait_until(lambda: inspector.summary()["inspected"] >= 1, 10, "the allowed camera judged")
            time.sleep(0.5)
        assert inspector.auth is not None and inspector.auth.refusals.refused >= 1
        with RecordStore(config.db_path) as store:
            assert {r.camera_id for r in store.query(limit=10)} == {"cam-1"}


def test_a_bus_open_to_the_network_needs_keys(toy_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="reachable from the network, so the bus must be authenticated"):
        loopback_config(tmp_path, {"model.package": toy_model_dir, "bus.bind": "tcp://0.0.0.0:5599"})


def test_a_trust_key_refuses_unsigned_packages_at_start_and_on_promotion(tmp_path: Path) -> None:
    secret, public = write_signing_key(tmp_path / "keys", "quality")
    key = load_private_key(secret)
    registry = tmp_path / "registry"
    signed_card = publish(
        registry, make_toy_package(tmp_path / "v1"), "1", sign=lambda c: sign_card(c, key, "qe")
    )
    publish(registry, make_toy_package(tmp_path / "v2", version="2"), "2")  # unsigned
    name = signed_card.name

    unsigned_dir = make_toy_package(tmp_path / "plain")
    with pytest.raises(ModelPackageError, match="it is not signed"):
        Inspector(loopback_config(tmp_path / "a", {"model.package": unsigned_dir, "model.trust_key": public}))

    promote(registry, name, "1")
    settings = {
        "model.registry": str(registry),
        "model.name": name,
        "model.poll_s": 0.1,
        "model.trust_key": public,
    }
    with Inspector(loopback_config(tmp_path / "b", settings)) as inspector:
        assert inspector.active.ref.version == "1"
        promote(registry, name, "2")
        time.sleep(1.0)
        assert inspector.active.ref.version == "1"  # the unsigned version was refused
        swaps = {
            s.labels["outcome"]: s.value
            for f in inspector.metrics.registry.collect()
            for s in f.samples
            if s.name == "edgeinspect_model_swaps_total"
        }
        assert swaps.get("rejected") == 1.0
