"""The model registry on an S3-compatible object store: a real moto server process on loopback."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import onnx
import pytest
from botocore.exceptions import ClientError

from edge_inspect.bus.contracts import FrameHeader
from edge_inspect.bus.transport import FrameSender
from edge_inspect.cli import main
from edge_inspect.inspector.service import Inspector
from edge_inspect.models.package import ModelPackageError, load_package, write_package
from edge_inspect.models.registry import (
    RegistryError,
    local_package_dir,
    open_registry,
    promote,
    promoted,
    publish,
    versions,
)
from edge_inspect.sinks.record_store import RecordStore
from tests.helpers import loopback_config, wait_until
from tests.toy_models import make_toy_package

# Every test here talks to a server process.
pytestmark = pytest.mark.slow

NAME = "toy-brightness"
PREFIX = "lines/models"


def _answers(server: subprocess.Popen[bytes], port: int) -> bool:
    if server.poll() is not None:
        raise RuntimeError(f"moto_server exited with {server.returncode} before answering on port {port}")
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
    except OSError:
        return False
    return True


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: _answers(server, port), 30, "the S3 server to answer")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(10)


@pytest.fixture
def bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket per test, and an environment that reaches only the test server."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    name = f"models-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("packages")
    return {v: make_toy_package(root / f"pkg{v}", version=v) for v in ("1", "2", "3")}


def url(bucket: str) -> str:
    return f"s3://{bucket}/{PREFIX}"


def onnx_key(package: Path, version: str) -> str:
    return f"{PREFIX}/{NAME}/{version}/model-{load_package(package).card.onnx_sha256}.onnx"


def tamper(bucket: str, key: str) -> None:
    client = boto3.client("s3")
    body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    client.put_object(Bucket=bucket, Key=key, Body=body + b"\0")


def fail(**_: Any) -> None:
    raise AssertionError("no S3 call was expected here")


def test_cli_publish_list_promote_rollback(
    bucket: str,
    packages: dict[str, Path],
    s3_endpoint: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The endpoint given on the command line, not through the environment.
    monkeypatch.delenv("AWS_ENDPOINT_URL")

    def models(*args: str) -> int:
        return main(["models", "--registry", url(bucket), "--s3-endpoint", s3_endpoint, *args])

    assert models("publish", str(packages["1"]), "--promote", "--by", "qe-anna") == 0
    assert models("publish", str(packages["2"]), "--by", "ci-pipeline") == 0
    assert capsys.readouterr().out.splitlines() == [
        f"published {NAME} 1 -> {url(bucket)} (by qe-anna)",
        f"promoted {NAME} 1",
        f"published {NAME} 2 -> {url(bucket)} (by ci-pipeline)",
    ]
    assert models("list") == 0
    listed = capsys.readouterr().out.splitlines()
    assert [(line[0], *line[2:].split()[:3]) for line in listed] == [
        ("*", NAME, "1", "toy"),
        (" ", NAME, "2", "toy"),
    ]
    assert models("promote", NAME, "2") == 0
    registry = open_registry(url(bucket), s3_endpoint)
    assert promoted(registry, NAME).version == "2" and promoted(registry, NAME).history == ["1"]
    assert models("rollback", NAME) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"rolled {NAME} back to 1"
    assert promoted(registry, NAME).version == "1" and promoted(registry, NAME).history == []
    keys = {o["Key"] for o in registry.client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert keys == {
        f"{PREFIX}/{NAME}/promoted.json",
        *(f"{PREFIX}/{NAME}/{v}/model.json" for v in ("1", "2")),
        *(onnx_key(packages[v], v) for v in ("1", "2")),
    }


def test_a_published_version_is_never_replaced(
    bucket: str,
    packages: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    publish(url(bucket), packages["1"])
    assert main(["models", "--registry", url(bucket), "publish", str(packages["1"])]) == 2
    assert "is already published" in capsys.readouterr().err
    # A rival build of the same version that passed the existence check just before the first publisher
    # finished: the conditional put of the card refuses it, and it cannot replace the winner's model.
    rival = make_toy_package(tmp_path / "rival", version="1")
    model = onnx.load(rival / "model.onnx")
    model.doc_string = "a different build"
    onnx.save(model, rival / "export.onnx")
    write_package(rival, rival / "export.onnx", load_package(rival).card)
    store = open_registry(url(bucket))

    def not_found(**_: Any) -> None:
        raise ClientError({"Error": {"Code": "404", "Message": "Not Found"}}, "HeadObject")

    monkeypatch.setattr(store.client, "head_object", not_found)
    with pytest.raises(RegistryError, match="immutable"):
        publish(store, rival)
    served = local_package_dir(url(bucket), NAME, "1", tmp_path / "cache")
    assert load_package(served).card.onnx_sha256 == load_package(packages["1"]).card.onnx_sha256
    with pytest.raises(RegistryError, match=re.escape("version '../1' cannot name")):
        publish(url(bucket), packages["1"], version="../1")


def test_a_half_uploaded_version_is_invisible(
    bucket: str, packages: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    publish(url(bucket), packages["1"])
    # What an interrupted publish leaves behind: the model without its card.
    boto3.client("s3").upload_file(str(packages["2"] / "model.onnx"), bucket, onnx_key(packages["2"], "2"))
    assert versions(url(bucket), NAME) == ["1"]
    with pytest.raises(RegistryError, match="no version '2'"):
        promote(url(bucket), NAME, "2")
    assert main(["models", "--registry", url(bucket), "list"]) == 0
    assert [line.split()[1] for line in capsys.readouterr().out.splitlines()] == ["1"]
    # Nothing of it stands in the way of publishing that version again.
    publish(url(bucket), packages["2"])
    assert versions(url(bucket), NAME) == ["1", "2"]


def test_local_copies_are_verified_and_reused(
    bucket: str, packages: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for version in ("1", "2"):
        publish(url(bucket), packages[version])
    cache = tmp_path / "cache"
    store = open_registry(url(bucket))
    first = local_package_dir(store, NAME, "1", cache)
    assert first == cache / NAME / "1" and load_package(first).card.version == "1"
    with monkeypatch.context() as patch:
        patch.setattr(store.client, "download_file", fail)
        assert local_package_dir(store, NAME, "1", cache) == first
    # A damaged local copy is fetched again.
    with (first / "model.onnx").open("ab") as fh:
        fh.write(b"\0")
    assert load_package(local_package_dir(store, NAME, "1", cache)).card.version == "1"
    # A model changed in the bucket after publishing is refused and never enters the cache.
    tamper(bucket, onnx_key(packages["2"], "2"))
    with pytest.raises(ModelPackageError, match="sha256"):
        local_package_dir(store, NAME, "2", cache)
    assert [p.name for p in (cache / NAME).iterdir()] == ["1"]
    with pytest.raises(RegistryError, match=r"refusing to promote .*sha256"):
        promote(store, NAME, "2")
    with pytest.raises(RegistryError, match="needs a local cache directory"):
        local_package_dir(store, NAME, "1")


def swaps(inspector: Inspector) -> dict[str, float]:
    return {
        s.labels["outcome"]: s.value
        for f in inspector.metrics.registry.collect()
        for s in f.samples
        if s.name == "edgeinspect_model_swaps_total"
    }


def test_a_running_inspector_follows_promotions_in_s3(
    bucket: str, packages: dict[str, Path], tmp_path: Path
) -> None:
    registry = url(bucket)
    for version in ("1", "2", "3"):
        publish(registry, packages[version])
    promote(registry, NAME, "1")
    config = loopback_config(
        tmp_path / "inspector",
        {"model.registry": str(registry), "model.name": NAME, "model.poll_s": 0.1, "batching.max_batch": 4},
    )
    inspector = Inspector(config)
    inspector.start()
    try:
        assert inspector.active.ref.version == "1"
        promote(registry, NAME, "2")
        wait_until(lambda: inspector.active.ref.version == "2", 10, "the swap to version 2")
        # A promoted version whose model was changed in the bucket is refused; version 2 keeps serving.
        tamper(bucket, onnx_key(packages["3"], "3"))
        record = {"version": "3", "promoted_ns": 0, "by": "corrupt-sync", "history": ["1", "2"]}
        boto3.client("s3").put_object(
            Bucket=bucket, Key=f"{PREFIX}/{NAME}/promoted.json", Body=json.dumps(record).encode()
        )
        wait_until(lambda: swaps(inspector).get("rejected") == 1.0, 10, "version 3 to be refused")
        assert inspector.active.ref.version == "2"
        with FrameSender(inspector.receiver.endpoint) as sender:
            sender.send(
                FrameHeader("cam", 0, "st", time.time_ns(), 32, 32, 1), np.full((32, 32), 200, np.uint8)
            )
        wait_until(lambda: inspector.summary()["inspected"] == 1, 10, "the frame to be judged")
    finally:
        inspector.stop()
    assert swaps(inspector) == {"swapped": 1.0, "rejected": 1.0}
    with RecordStore(config.db_path) as store:
        assert [r.model.version for r in store.query(limit=10)] == ["2"]
    assert sorted(p.name for p in (config.model_cache_dir / NAME).iterdir()) == ["1", "2"]
