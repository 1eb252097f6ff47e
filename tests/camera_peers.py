"""Real camera peers for the GigE Vision and GenTL tests: Aravis' fake GigE Vision camera as a process on
loopback (started, killed and restarted by the tests) and the virtual GenTL producer that the `genicam` wheel
ships. A missing peer fails the test with how to install it; nothing here skips."""

from __future__ import annotations

import errno
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

import pytest

FAKE_GV_CAMERA = "arv-fake-gv-camera-0.8"
# Loopback only: the fake camera also listens for discovery broadcasts, which nothing here sends.
FAKE_CAMERA_ADDRESS = "127.0.0.1"
GVCP_PORT = 3956
MAKE_PEERS = (
    "run `make peers` (as root: it installs Debian's aravis-tools and gir1.2-aravis-0.8, and the camera "
    "extra)"
)


def require_aravis() -> None:
    """Fail, saying how to install them, unless the Aravis Python bindings and the fake camera are here."""
    if shutil.which(FAKE_GV_CAMERA) is None:
        pytest.fail(f"{FAKE_GV_CAMERA} is not installed: {MAKE_PEERS}")
    try:
        import gi

        gi.require_version("Aravis", "0.8")
        from gi.repository import Aravis  # noqa: F401
    except (ImportError, ValueError) as exc:
        pytest.fail(f"the Aravis bindings are not importable ({exc}): {MAKE_PEERS}")


def gvcp_port_taken() -> bool:
    """Whether something (a fake camera) holds the GigE Vision control port on loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((FAKE_CAMERA_ADDRESS, GVCP_PORT))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
    return False


class FakeGvCamera:
    """`arv-fake-gv-camera-0.8` on 127.0.0.1, optionally dropping `lost_per_mille` of its stream packets."""

    def __init__(self, lost_per_mille: int = 0, serial: str = "GV01") -> None:
        require_aravis()
        self.lost_per_mille = lost_per_mille
        self.serial = serial
        self.address = FAKE_CAMERA_ADDRESS
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 10.0) -> None:
        if gvcp_port_taken():
            pytest.fail(
                f"UDP {FAKE_CAMERA_ADDRESS}:{GVCP_PORT} is already taken (another fake camera or GigE Vision "
                "tool is running); stop it first"
            )
        command = [FAKE_GV_CAMERA, "-i", FAKE_CAMERA_ADDRESS, "-s", self.serial]
        if self.lost_per_mille:
            command += ["-r", str(self.lost_per_mille)]
        self._process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout_s
        while not gvcp_port_taken():
            if self._process.poll() is not None:
                _, stderr = self._process.communicate()
                pytest.fail(
                    f"{FAKE_GV_CAMERA} exited with {self._process.returncode}: {stderr.decode()[-2000:]}"
                )
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"{FAKE_GV_CAMERA} did not open its control port within {timeout_s} s")
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL: the camera vanishes as a powered-off one does, without a word to its controller."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
            if process.stderr is not None:
                process.stderr.close()

    def __enter__(self) -> FakeGvCamera:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.kill()


def viky_cti() -> Path:
    """The virtual GenTL producer inside the `genicam` wheel (three simulated cameras, no network)."""
    try:
        import genicam
    except ImportError as exc:
        pytest.fail(f"the genicam package is not installed ({exc}): {MAKE_PEERS}")
    cti = Path(genicam.__file__).with_name("viky.cti")
    if not cti.is_file():
        pytest.fail(f"{cti} is missing: the genicam wheel ships it; reinstall it with {MAKE_PEERS}")
    return cti
