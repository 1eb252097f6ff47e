"""The shipped rules in a real Prometheus scraping a real inspector: a camera stops and
EdgeInspectCameraSilent fires.

The rule file Prometheus loads is deploy/prometheus/edge-inspect.rules.yml with one change: the silent
alert's `for:` is 2 s instead of 1 minute. The silence limit itself is not in the rule but in the line
config (`camera_defaults.silent_after_s`, exported as `edgeinspect_camera_silent`), so the inspector here
runs with a 2 s limit, as a line would set its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import wait_until
from tests.output_peers import free_port
from tests.prometheus_peer import Prometheus, load_rules, wait_for_alert

pytestmark = pytest.mark.slow

ALERT = "EdgeInspectCameraSilent"
CAMERA = "cam-alert"
SILENT_AFTER_S = 2.0
ALERT_FOR = "2s"


def rules_with_short_for(name: str, for_: str) -> dict[str, Any]:
    """The shipped rules with alert `name` pending for `for_` only; everything else as shipped."""
    rules = load_rules()
    matches = [rule for group in rules["groups"] for rule in group["rules"] if rule.get("alert") == name]
    assert len(matches) == 1, f"{name} is not exactly once in the shipped rules"
    matches[0]["for"] = for_
    return rules


def edge_inspect(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "edge_inspect", *args],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def camera_silent(prometheus: Prometheus) -> list[float]:
    """`edgeinspect_camera_silent` of the test's camera as Prometheus has it now (empty before a scrape)."""
    result = prometheus.api(f"query?query=edgeinspect_camera_silent%7Bcamera%3D%22{CAMERA}%22%7D")["result"]
    return [float(sample["value"][1]) for sample in result]


def test_camera_silent_alert_fires_when_a_camera_stops(toy_model_dir: Path, tmp_path: Path) -> None:
    bus, metrics_port = f"tcp://127.0.0.1:{free_port()}", free_port()
    config = tmp_path / "line.toml"
    config.write_text(f"[camera_defaults]\nsilent_after_s = {SILENT_AFTER_S}\n", encoding="utf-8")
    rules = tmp_path / "edge-inspect.rules.yml"
    rules.write_text(yaml.safe_dump(rules_with_short_for(ALERT, ALERT_FOR)), encoding="utf-8")

    inspector = edge_inspect(
        "serve",
        "--config",
        str(config),
        "--model",
        str(toy_model_dir),
        "--workdir",
        str(tmp_path / "inspector"),
        "--bind",
        bus,
        "--results",
        "",
        "--metrics-port",
        str(metrics_port),
    )
    prometheus: Prometheus | None = None
    camera: subprocess.Popen[str] | None = None
    try:
        assert inspector.stdout is not None
        ready = json.loads(inspector.stdout.readline())
        assert ready["event"] == "ready", ready
        target = f"127.0.0.1:{metrics_port}"
        prometheus = Prometheus(
            tmp_path / "prometheus",
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(rules)],
                # The job name the shipped rules select.
                "scrape_configs": [{"job_name": "edge-inspect", "static_configs": [{"targets": [target]}]}],
            },
        )
        camera = edge_inspect(
            "camera", "synthetic", "--endpoint", bus, "--camera-id", CAMERA, "--fps", "20",
            "--width", "64", "--height", "48", "--channels", "1",
        )  # fmt: skip
        # While the camera sends, Prometheus sees it and it is not silent.
        wait_until(lambda: camera_silent(prometheus) == [0.0], 20, f"{CAMERA} scraped as not silent", 0.5)
        assert not [a for a in prometheus.alerts() if a["labels"]["alertname"] == ALERT]
        stop(camera)

        alert = wait_for_alert(prometheus, ALERT, "firing", timeout_s=20)
        assert alert["labels"]["camera"] == CAMERA
        assert alert["labels"]["severity"] == "critical"
        assert alert["labels"]["job"] == "edge-inspect"
        assert float(alert["value"]) > SILENT_AFTER_S  # the last frame's age
        assert CAMERA in alert["annotations"]["summary"]
        # The inspector itself is up: only the camera alert fires.
        assert not [a for a in prometheus.alerts() if a["labels"]["alertname"] == "EdgeInspectInspectorDown"]
        # Every shipped rule evaluated on the real inspector's series without an error (label matching).
        evaluated = [rule for group in prometheus.api("rules")["groups"] for rule in group["rules"]]
        assert len(evaluated) == sum(len(group["rules"]) for group in load_rules()["groups"])
        assert [(r["name"], r.get("lastError")) for r in evaluated if r["health"] != "ok"] == []
    finally:
        for proc in (camera, inspector):
            if proc is not None:
                stop(proc)
        if prometheus is not None:
            prometheus.close()
