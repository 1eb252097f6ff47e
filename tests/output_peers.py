"""Real peers for the plant-output tests: a mosquitto broker on loopback (plain or TLS), results to
record, free ports.

A peer that is not installed fails the test (`make peers` installs them), it never skips it: a
skipped broker test would hide exactly the outage behaviour it exists to check.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from edge_inspect.bus.contracts import Defect, InspectionResult, ModelRef, StageTimings
from edge_inspect.sinks.record_store import RecordStore
from tests.tls_peers import TlsFiles


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_result(
    seq: int, camera: str = "cam-1", station: str = "st-1", verdict: str = "OK", t_ns: int | None = None
) -> InspectionResult:
    defects = [Defect(cls="crack", score=0.9, bbox=(1, 2, 3, 4), area_px=12)] if verdict == "NG" else []
    return InspectionResult(
        camera_id=camera,
        seq=seq,
        part_id=f"part-{seq}",
        station=station,
        t_capture_ns=time.time_ns() if t_ns is None else t_ns,
        verdict=verdict,
        score=0.9 if verdict == "NG" else 0.1,
        threshold=0.5,
        defects=defects,
        model=ModelRef("toy", "1", "0" * 64),
        timings_ms=StageTimings(total=1.0),
    )


def record(db_path: Path, *results: InspectionResult) -> None:
    with RecordStore(db_path) as store:
        store.add_results(results, with_outbox=False)


def wait_port(port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port} after {timeout_s} s")


class Mosquitto:
    """Debian's mosquitto on a loopback port, with persistence (a restart keeps sessions and retained
    messages, as a production broker is configured). With `tls`, the port is a TLS listener presenting
    `tls.server_cert`; `require_certificate` makes it accept only clients with a certificate issued by
    `tls.ca_cert` (mutual TLS). Both may be changed between `stop()` and `start()`."""

    def __init__(self, workdir: Path, tls: TlsFiles | None = None, require_certificate: bool = False) -> None:
        binary = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
        if binary is None:
            pytest.fail("mosquitto is not installed: run `make peers` (apt-get install -y mosquitto)")
        self.binary = binary
        self.port = free_port()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.conf = workdir / "mosquitto.conf"
        self.tls, self.require_certificate = tls, require_certificate
        self.proc: subprocess.Popen[bytes] | None = None

    def _config(self) -> str:
        # `user root`: as root, mosquitto would otherwise switch to the user mosquitto, which cannot write
        # the test's temporary directory (as another user, the option has no effect).
        lines = [f"listener {self.port} 127.0.0.1"]
        if self.tls is not None:
            lines += [
                f"cafile {self.tls.ca_cert}",
                f"certfile {self.tls.server_cert}",
                f"keyfile {self.tls.server_key}",
                f"require_certificate {'true' if self.require_certificate else 'false'}",
            ]
        lines += [
            "allow_anonymous true",
            "user root",
            "persistence true",
            f"persistence_location {self.workdir}/",
            f"log_dest file {self.workdir}/mosquitto.log",
        ]
        return "\n".join(lines) + "\n"

    def start(self) -> None:
        self.conf.write_text(self._config())
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdin=subprocess.DEVNULL)
        wait_port(self.port, 10.0)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # graceful: mosquitto saves its persistence file
            self.proc.wait(10)
        self.proc = None
