"""Real Prometheus peers for the deploy tests: Debian's `promtool` and a `prometheus` server on loopback.

A missing binary fails the test with how to install it (`make peers`), it never skips: a skipped rules
test would ship alerts nobody ever evaluated.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import wait_until
from tests.output_peers import free_port, wait_port

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS_DIR / "edge-inspect.rules.yml"


def binary(name: str) -> str:
    """The path of a Prometheus tool, or a failed test saying how to install it."""
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: run `make peers` (apt-get install -y prometheus)")
    return found


def promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Run promtool; the caller asserts on the return code and shows the output."""
    return subprocess.run(
        [binary("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def load_rules(path: Path = RULES) -> dict[str, Any]:
    with path.open(encoding="utf-8") as file:
        return yaml.safe_load(file)


def alert_rules(rules: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every alerting rule of a rule file, by alert name."""
    return {rule["alert"]: rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule}


class Prometheus:
    """A Prometheus server on a free loopback port with its own TSDB, scraping what the config names."""

    def __init__(self, workdir: Path, config: dict[str, Any]) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config_path = workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        self.log_path = workdir / "prometheus.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    binary("prometheus"),
                    f"--config.file={config_path}",
                    f"--storage.tsdb.path={workdir / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_port(self.port, 20)
            # The port opens before the TSDB is loaded: until then the API answers 503.
            wait_until(self.ready, 30, "prometheus ready", 0.2)
        except AssertionError:
            self.close()
            raise AssertionError(f"prometheus did not start:\n{self.log()}") from None

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=5) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def api(self, path: str) -> Any:
        """The `data` of a Prometheus HTTP API answer (`/api/v1/...`)."""
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}", timeout=5) as response:
            answer = json.load(response)
        assert answer["status"] == "success", answer
        return answer["data"]

    def alerts(self) -> list[dict[str, Any]]:
        return self.api("alerts")["alerts"]

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-4000:]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def wait_for_alert(prometheus: Prometheus, name: str, state: str, timeout_s: float) -> dict[str, Any]:
    """The first alert `name` in `state` ("pending" or "firing"), polled once a second."""
    deadline = time.monotonic() + timeout_s
    seen: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        try:
            seen = prometheus.alerts()
        except (urllib.error.URLError, OSError):
            seen = []
        for alert in seen:
            if alert["labels"]["alertname"] == name and alert["state"] == state:
                return alert
        time.sleep(1)
    raise AssertionError(
        f"alert {name} not {state} after {timeout_s} s; alerts: {seen}\nprometheus log:\n{prometheus.log()}"
    )
