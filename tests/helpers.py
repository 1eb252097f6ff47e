"""Small real peers for tests: an MES webhook receiver on loopback, a wait-until helper, and a runner for
the benchmark scripts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from edge_inspect.inspector.config import InspectorConfig, build_config

ROOT = Path(__file__).resolve().parents[1]


class MesReceiver:
    """An MES endpoint that records every POST and de-duplicates by Idempotency-Key, as a real MES would."""

    def __init__(self, port: int = 0, fail_first: int = 0) -> None:
        """`fail_first`: answer that many POSTs 503 (an MES restarting) before taking any."""
        self.keys: list[str] = []
        self.refused = 0
        self.bodies: dict[str, dict] = {}
        lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                key = self.headers["Idempotency-Key"]
                with lock:
                    refuse = owner.refused < fail_first
                    if refuse:
                        owner.refused += 1
                    else:
                        owner.keys.append(key)
                        owner.bodies.setdefault(key, body)
                self.send_response(503 if refuse else 200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_port
        self.url = f"http://127.0.0.1:{self.port}/mes/results"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def run_benchmark(module: str, *args: str, timeout: float) -> dict[str, Any]:
    """A benchmark script's JSON result (its last stdout line), run as `python -m module` from the
    repository root; fails with its stderr when it exits non-zero."""
    # Tests set TRITON_INTERPRET without a GPU; the benchmarks refuse to time the interpreted kernel.
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    completed = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert completed.returncode == 0, f"benchmark exited {completed.returncode}:\n{completed.stderr}"
    lines = completed.stdout.strip().splitlines()
    assert lines, f"benchmark printed nothing on stdout:\n{completed.stderr}"
    return json.loads(lines[-1])


def loopback_config(workdir: Path, settings: dict[str, Any]) -> InspectorConfig:
    """An inspector config on ephemeral loopback ports, without results PUB or metrics unless `settings`
    (dotted keys, as flags override a file) asks for them."""
    defaults = {
        "records.workdir": workdir,
        "bus.bind": "tcp://127.0.0.1:*",
        "bus.results": None,
        "metrics.port": None,
    }
    return build_config({}, {**defaults, **settings})


def run_python(script: str, *args: str) -> list[str]:
    """Run `script` in a fresh interpreter from the repository root (so modules blocked in it stay blocked
    there alone); its stdout lines, failing with its stderr when it exits non-zero."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()
