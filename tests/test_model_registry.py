"""Registry (publish / promote / rollback) and hot swap in a running inspector under load."""

from __future__ import annotations

import json
import stat
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edge_inspect.bus.contracts import FrameHeader
from edge_inspect.bus.transport import FrameSender
from edge_inspect.inspector.service import Inspector
from edge_inspect.models.package import load_package
from edge_inspect.models.registry import (
    RegistryError,
    local_package_dir,
    promote,
    promoted,
    publish,
    rollback,
    versions,
)
from edge_inspect.sinks.record_store import RecordStore
from tests.helpers import loopback_config, wait_until
from tests.toy_models import make_toy_package

NAME = "toy-brightness"


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    root = tmp_path / "registry"
    for version in ("1", "2"):
        publish(root, make_toy_package(tmp_path / f"pkg{version}", version=version))
    return root


def test_publish_is_immutable_and_promotion_keeps_history(registry: Path, tmp_path: Path) -> None:
    assert versions(registry, NAME) == ["1", "2"]
    with pytest.raises(RegistryError, match="immutable"):
        publish(registry, registry / NAME / "1")
    assert not (registry / NAME / "1" / "model.onnx").stat().st_mode & stat.S_IWUSR
    assert promoted(registry, NAME) is None
    promote(registry, NAME, "1")
    promote(registry, NAME, "2")
    assert promoted(registry, NAME).version == "2" and promoted(registry, NAME).history == ["1"]
    assert rollback(registry, NAME).version == "1"
    with pytest.raises(RegistryError, match="no earlier"):
        rollback(registry, NAME)
    with pytest.raises(RegistryError, match="no version"):
        promote(registry, NAME, "9")
    renamed = publish(registry, tmp_path / "pkg1", version="1.1")
    assert renamed.version == "1.1"
    assert load_package(registry / NAME / "1.1").card == renamed
    # On a filesystem the registry's own directory is served, verified, without a copy.
    assert local_package_dir(registry, NAME, "1.1", tmp_path / "unused-cache") == registry / NAME / "1.1"
    assert not (tmp_path / "unused-cache").exists()


def tamper(package: Path) -> None:
    onnx = package / "model.onnx"
    onnx.chmod(0o644)
    with onnx.open("ab") as fh:
        fh.write(b"\0")


def test_promote_refuses_a_tampered_package(registry: Path) -> None:
    tamper(registry / NAME / "2")
    with pytest.raises(RegistryError, match="sha256"):
        promote(registry, NAME, "2")


def test_hot_swap_under_load_judges_every_frame_exactly_once(registry: Path, tmp_path: Path) -> None:
    promote(registry, NAME, "1")
    config = loopback_config(
        tmp_path / "inspector",
        {"model.registry": str(registry), "model.name": NAME, "model.poll_s": 0.1, "batching.max_batch": 4},
    )
    inspector = Inspector(config)
    inspector.start()
    frames = 80  # 4 s at 20 frames/s
    image = np.full((32, 32), 200, np.uint8)

    def camera() -> None:
        with FrameSender(inspector.receiver.endpoint) as sender:
            start = time.monotonic()
            for seq in range(frames):
                time.sleep(max(0.0, start + seq / 20 - time.monotonic()))
                sender.send(FrameHeader("cam", seq, "st", time.time_ns(), 32, 32, 1), image)

    sender_thread = threading.Thread(target=camera)
    sender_thread.start()
    try:
        wait_until(lambda: inspector.summary()["inspected"] >= 20, 20, "20 results on version 1")
        promote(registry, NAME, "2")
        wait_until(lambda: inspector.active.ref.version == "2", 10, "the swap to version 2")
        # A promoted package that fails its hash check is refused; version 2 keeps serving.
        publish(registry, make_toy_package(tmp_path / "pkg3", version="3"))
        tamper(registry / NAME / "3")
        (registry / NAME / "promoted.json").write_text(
            json.dumps({"version": "3", "promoted_ns": 0, "by": "corrupt-sync", "history": ["1", "2"]})
        )
        time.sleep(0.5)
        assert inspector.active.ref.version == "2"
        sender_thread.join()
        wait_until(lambda: inspector.summary()["inspected"] == frames, 20, "every frame judged")
    finally:
        sender_thread.join()
        inspector.stop()
    swaps = {
        s.labels["outcome"]: s.value
        for f in inspector.metrics.registry.collect()
        for s in f.samples
        if s.name == "edgeinspect_model_swaps_total"
    }
    assert swaps == {"swapped": 1.0, "rejected": 1.0}
    with RecordStore(config.db_path) as store:
        results = sorted(store.query(limit=1000), key=lambda r: r.seq)
    assert [r.seq for r in results] == list(range(frames))  # each frame exactly once
    judged_by = [r.model.version for r in results]
    first_v2 = judged_by.index("2")
    assert judged_by[:first_v2] == ["1"] * first_v2 and judged_by[first_v2:] == ["2"] * (frames - first_v2)
    assert 20 <= first_v2 < frames
