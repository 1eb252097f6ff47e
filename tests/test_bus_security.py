"""CURVE on the frame bus: allow-listed cameras get through, everyone else is refused and counted; message
size capped by ZeroMQ itself. Real sockets on loopback, and a real camera process."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from edge_inspect.bus.contracts import FrameHeader, parse_header
from edge_inspect.bus.security import BusKeyError, ClientKeys, ServerAuth, is_loopback, write_key_pair
from edge_inspect.bus.transport import FrameReceiver, FrameSender
from tests.helpers import ROOT, wait_until


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    write_key_pair(tmp_path / "server", "inspector")
    for name in ("cam-1", "intruder"):
        write_key_pair(tmp_path / "clients", name)
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "cam-1.key").write_text((tmp_path / "clients" / "cam-1.key").read_text())
    return tmp_path


def frame(camera: str, seq: int) -> tuple[FrameHeader, np.ndarray]:
    return FrameHeader(camera, seq, "st-1", time.time_ns(), 8, 4, 1), np.full((4, 8), seq, np.uint8)


def received_cameras(receiver: FrameReceiver, seconds: float) -> list[str]:
    cameras = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        parts = receiver.recv(timeout_ms=100)
        if parts is not None:
            cameras.append(parse_header(parts[0]).camera_id)
    return cameras


def test_key_pairs_are_written_owner_only_and_never_overwritten(tmp_path: Path) -> None:
    public, secret = write_key_pair(tmp_path, "cam-7")
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
    assert "secret-key" not in public.read_text() and "secret-key" in secret.read_text()
    with pytest.raises(BusKeyError, match="refusing to overwrite"):
        write_key_pair(tmp_path, "cam-7")


def test_only_allow_listed_cameras_reach_the_inspector(keys: Path) -> None:
    context = zmq.Context()
    auth = ServerAuth(keys / "server" / "inspector.key_secret", keys / "allowed", context)
    server_public = keys / "server" / "inspector.key"
    try:
        with FrameReceiver("tcp://127.0.0.1:*", context=context, auth=auth) as receiver:
            allowed = ClientKeys(keys / "clients" / "cam-1.key_secret", server_public)
            intruder = ClientKeys(keys / "clients" / "intruder.key_secret", server_public)
            with (
                FrameSender(receiver.endpoint, "latest", keys=allowed) as good,
                FrameSender(receiver.endpoint, "latest", keys=intruder) as bad,
                FrameSender(receiver.endpoint, "latest") as plain,
            ):
                for seq in range(5):
                    for sender, camera in ((good, "cam-1"), (bad, "intruder"), (plain, "plaintext")):
                        sender.send(*frame(camera, seq))
                    time.sleep(0.05)
                cameras = received_cameras(receiver, 2.0)
            assert set(cameras) == {"cam-1"} and len(cameras) >= 1
            wait_until(lambda: auth.refusals.refused >= 1, 10, "the intruder's handshake refused")
    finally:
        auth.stop()
        context.term()


def test_a_missing_or_public_only_key_file_says_what_to_give(keys: Path) -> None:
    with pytest.raises(BusKeyError, match="does not exist; create one with `edge-inspect keys"):
        ClientKeys(keys / "nope.key_secret", keys / "server" / "inspector.key").apply(
            zmq.Context.instance().socket(zmq.PUSH)
        )
    with pytest.raises(BusKeyError, match="holds only a public key"):
        ServerAuth(keys / "server" / "inspector.key", keys / "allowed", zmq.Context.instance())


def test_a_message_over_the_size_cap_is_dropped_by_zeromq(keys: Path) -> None:
    with FrameReceiver("tcp://127.0.0.1:*", max_message_bytes=10_000) as receiver:
        with FrameSender(receiver.endpoint) as big:
            header = FrameHeader("big", 0, "st", 0, 200, 100, 1)
            big.send(header, np.zeros((100, 200), np.uint8))
            assert received_cameras(receiver, 1.0) == []
        with FrameSender(receiver.endpoint) as small:
            small.send(*frame("small", 1))
            assert received_cameras(receiver, 1.0) == ["small"]


@pytest.mark.parametrize(
    ("endpoint", "loopback"),
    [
        ("tcp://127.0.0.1:5555", True),
        ("tcp://127.3.0.9:5555", True),
        ("tcp://localhost:5555", True),
        ("tcp://[::1]:5555", True),
        ("ipc:///run/edge-inspect/bus", True),
        ("tcp://*:5555", False),
        ("tcp://0.0.0.0:5555", False),
        ("tcp://eth0:5555", False),
        ("tcp://[::]:5555", False),
    ],
)
def test_loopback_endpoints_are_told_apart_from_network_ones(endpoint: str, loopback: bool) -> None:
    assert is_loopback(endpoint) is loopback


def test_the_camera_command_connects_with_its_keys(keys: Path) -> None:
    context = zmq.Context()
    auth = ServerAuth(keys / "server" / "inspector.key_secret", keys / "allowed", context)
    try:
        with FrameReceiver("tcp://127.0.0.1:*", context=context, auth=auth) as receiver:
            argv = [
                *("camera", "synthetic", "--width", "32", "--height", "32", "--fps", "50"),
                *("--max-frames", "5", "--camera-id", "cam-1", "--endpoint", receiver.endpoint),
                *("--key", str(keys / "clients" / "cam-1.key_secret")),
                *("--server-key", str(keys / "server" / "inspector.key")),
            ]
            camera = subprocess.Popen(
                [sys.executable, "-m", "edge_inspect", *argv], cwd=ROOT, stdout=subprocess.PIPE, text=True
            )
            cameras = received_cameras(receiver, 5.0)
            stdout, _ = camera.communicate(timeout=30)
        assert camera.returncode == 0
        assert json.loads(stdout.strip().splitlines()[-1])["sent"] == 5
        assert cameras == ["cam-1"] * 5
    finally:
        auth.stop()
        context.term()
