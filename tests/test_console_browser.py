"""The operator console in a real Chromium against a real inspector fed by camera processes.

One line for the module: the inspector (toy model with an anomaly map: bright pixels are defects), the
console, a camera that keeps sending good parts, and two logged-in browsers (an engineer and an
operator at two panels). Cameras that send one NG or REVIEW part and stop drive each test.
Screenshots of every view go to $EDGE_INSPECT_SCREENSHOTS (docs/screenshots to refresh the docs'),
else to the test's temporary directory.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edge_inspect.console.store import ConsoleStore
from edge_inspect.console.users import add_user
from edge_inspect.sinks.record_store import RecordStore
from tests.browser import PANEL, chromium, save_screenshot

pytestmark = pytest.mark.slow

CAMERA_TIMEOUT_S = 3.0
PASSWORDS = {"anna": "anna-engineer-pw", "ben": "ben-operator-pw"}


def edge_inspect(*args: str, stdout: Any = subprocess.PIPE) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "edge_inspect", *args], stdout=stdout, text=True, env=env)


def first_json_line(proc: subprocess.Popen, event: str) -> dict[str, Any]:
    assert proc.stdout is not None
    for line in proc.stdout:
        try:
            message = json.loads(line)
        except json.JSONDecodeError:
            continue
        if message.get("event") == event:
            return message
    raise AssertionError(f"the process exited (code {proc.wait()}) before saying {event!r}; run it with -v")


def part_images(root: Path) -> dict[str, Path]:
    """One folder per kind of part, 64x64 mono: dark (OK), dark with a bright 12x12 spot (NG), dark with
    a grey spot at the REVIEW band's middle (score 128/255)."""
    dark = np.full((64, 64), 40, np.uint8)
    bright, grey = dark.copy(), dark.copy()
    bright[20:32, 36:48] = 250
    grey[30:46, 12:30] = 128
    folders = {}
    for name, image in (("good", dark), ("ng", bright), ("review", grey)):
        folder = root / name
        folder.mkdir(parents=True)
        cv2.imwrite(str(folder / f"{name}-part.png"), image)
        folders[name] = folder
    return folders


@dataclass
class Line:
    workdir: Path
    bus: str
    url: str
    images: dict[str, Path]
    pages: dict[str, Any]
    shots: Path

    @property
    def db(self) -> Path:
        return self.workdir / "records.sqlite"

    def send_one(self, kind: str, camera_id: str) -> None:
        """A camera process that sends one part of `kind` and stops (so it falls silent)."""
        camera = edge_inspect(
            *("camera", "folder", str(self.images[kind]), "--endpoint", self.bus, "--camera-id", camera_id),
            *("--station", "st-2", "--max-frames", "1", "--fps", "0"),
            stdout=subprocess.DEVNULL,
        )
        assert camera.wait(timeout=60) == 0

    def recorded(self, camera_id: str) -> list[Any]:
        with RecordStore(self.db) as store:
            return store.query(camera_id=camera_id, limit=10)


@pytest.fixture(scope="module")
def line(toy_map_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Line]:
    root = tmp_path_factory.mktemp("console")
    workdir, users = root / "inspector", root / "users.json"
    add_user(users, "anna", "engineer", PASSWORDS["anna"])
    add_user(users, "ben", "operator", PASSWORDS["ben"])
    images = part_images(root / "parts")
    shots = Path(os.environ.get("EDGE_INSPECT_SCREENSHOTS") or root / "screenshots")
    procs: list[subprocess.Popen] = []
    try:
        inspector = edge_inspect(
            *("serve", "--model", str(toy_map_model_dir), "--workdir", str(workdir)),
            *("--bind", "tcp://127.0.0.1:*", "--results", "", "--metrics-port", "0"),
            *("--archive-ok-rate", "1"),  # so that the good camera's tile shows its parts too
        )
        procs.append(inspector)
        bus = first_json_line(inspector, "ready")["bind"]
        console = edge_inspect(
            *("console", "--workdir", str(workdir), "--port", "0", "--users", str(users)),
            *("--camera-timeout", str(CAMERA_TIMEOUT_S)),
        )
        procs.append(console)
        url = first_json_line(console, "console_ready")["url"]
        procs.append(
            edge_inspect(
                *("camera", "folder", str(images["good"]), "--loop", "--fps", "5", "--endpoint", bus),
                *("--camera-id", "cam-1", "--station", "st-1"),
                stdout=subprocess.DEVNULL,
            )
        )
        with chromium() as browser:
            pages = {}
            for name in ("anna", "ben"):
                page = browser.new_context(viewport=PANEL).new_page()
                page.goto(url)
                page.click("#user-button")
                page.fill("#login-name", name)
                page.fill("#login-password", PASSWORDS[name])
                page.click("#login-form button[type=submit]")
                page.wait_for_selector(f"#user-button:has-text('{name}')")
                pages[name] = page
            yield Line(workdir, bus, url, images, pages, shots)
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(procs):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_a_new_ng_part_is_on_the_page_within_a_second_and_its_silent_camera_within_the_timeout(
    line: Line,
) -> None:
    page = line.pages["anna"]
    page.wait_for_selector(".tile[data-camera='cam-1'][data-verdict='OK']")
    line.send_one("ng", "cam-2")
    alarm = page.wait_for_selector("li.alarm.kind-ng_part", state="attached", timeout=5000)
    (result,) = line.recorded("cam-2")
    assert result.verdict == "NG" and result.defects
    shown_ms = float(alarm.get_attribute("data-shown-ms"))
    # From the camera's capture to the alarm on the page: inspection, record, feed, event stream, page.
    assert shown_ms - result.t_capture_ns / 1e6 < 1000
    assert alarm.get_attribute("data-id") == f"ng:{result.result_id}"
    tile = page.wait_for_selector(".tile[data-camera='cam-2'][data-verdict='NG']", timeout=2000)
    assert "tile verdict-NG" in tile.get_attribute("class")
    page.wait_for_function("document.querySelector(\".tile[data-camera='cam-2'] img\")?.naturalWidth > 0")
    save_screenshot(page, line.shots, "line")

    page.wait_for_selector(".tile[data-camera='cam-2'][data-online='false']", timeout=10_000)
    silent_after_s = time.time() - result.t_capture_ns / 1e9
    assert CAMERA_TIMEOUT_S <= silent_after_s < CAMERA_TIMEOUT_S + 1.5
    assert "CAMERA SILENT" in page.inner_text(".tile[data-camera='cam-2'] .verdict")
    assert page.query_selector(".tile[data-camera='cam-1'][data-online='true']") is not None
    page.wait_for_selector("li.alarm.kind-camera_silent[data-id^='silent:cam-2:']", state="attached")


def test_an_acknowledgement_in_one_browser_shows_in_the_other(line: Line) -> None:
    anna, ben = line.pages["anna"], line.pages["ben"]
    (result,) = line.recorded("cam-2")
    alarm_id = f"ng:{result.result_id}"
    for page in (anna, ben):
        page.click("nav [data-view='alarms']")
        page.wait_for_selector(f"li.alarm[data-id='{alarm_id}'] .state.open")
    anna.check(f"li.alarm[data-id='{alarm_id}'] input[type=checkbox]")
    anna.check("li.alarm[data-id^='silent:cam-2:'] input[type=checkbox]")
    anna.fill("#ack-note", "spot on the disc face, part set aside")
    anna.click("#ack-selected")
    acked = ben.wait_for_selector(f"li.alarm[data-id='{alarm_id}'] .acked-by", timeout=2000)
    assert "anna" in acked.inner_text() and "part set aside" in acked.inner_text()
    assert ben.query_selector("li.alarm[data-id^='silent:cam-2:'] .acked-by") is not None
    save_screenshot(ben, line.shots, "alarms")
    # Persisted: a browser opened now sees it acknowledged, and the acknowledgement is audited.
    ben.reload()
    ben.click("nav [data-view='alarms']")
    ben.wait_for_selector(f"li.alarm[data-id='{alarm_id}'] .acked-by")
    with ConsoleStore(line.workdir / "console.sqlite") as store:
        trail = store.audit_trail()
    (entry,) = [e for e in trail if e["action"] == "acknowledge"]
    assert entry["who"] == "anna" and alarm_id in entry["target"].split(",")


def test_only_logged_in_users_acknowledge(line: Line) -> None:
    request = urllib.request.Request(
        line.url + "api/alarms/ack",
        data=json.dumps({"ids": ["x"]}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    assert refused.value.code == 401


def test_a_review_part_judged_ng_in_the_browser_is_a_label_that_retraining_reads(line: Line) -> None:
    from edge_inspect.training.retrain import line_samples

    page = line.pages["ben"]
    page.click("nav [data-view='review']")
    line.send_one("review", "cam-3")
    (result,) = line.recorded("cam-3")
    assert result.verdict == "REVIEW"
    card = page.wait_for_selector(f".card[data-result-id='{result.result_id}']", timeout=5000)
    page.wait_for_function(
        f"[...document.querySelectorAll(\".card[data-result-id='{result.result_id}'] img\")]"
        ".every((img) => img.naturalWidth > 0)"
    )
    # The map model's anomaly map lies over the second image (a missing one would have been removed).
    assert card.query_selector(".part-image.heat img.heat-map") is not None
    save_screenshot(page, line.shots, "review")
    card.query_selector("button.ng").click()
    page.wait_for_selector(f".card[data-result-id='{result.result_id}']", state="detached")
    samples = dict(line_samples(line.db))
    assert samples[result.result_id].probability == 1.0
    with RecordStore(line.db) as store:
        (label,) = [lab for lab in store.labels() if lab.result_id == result.result_id]
    assert (label.label, label.labelled_by) == ("NG", "ben")
    # The other panel's queue drops the part too.
    line.pages["anna"].click("nav [data-view='review']")
    line.pages["anna"].wait_for_selector(f".card[data-result-id='{result.result_id}']", state="detached")


def test_shift_view_and_part_lookup(line: Line) -> None:
    page = line.pages["anna"]
    page.click("nav [data-view='shift']")
    page.wait_for_selector("#shift .kpis")
    assert page.query_selector("#shift svg.chart polyline") is not None
    ng = page.inner_text("#shift .kpi.ng .value")
    assert int(ng) >= 1
    save_screenshot(page, line.shots, "shift")

    page.click("nav [data-view='lookup']")
    page.fill("#lookup-part", "ng-part")
    page.click("#lookup-form button[type=submit]")
    card = page.wait_for_selector("#lookup .card.verdict-NG")
    assert "cam-2" in card.inner_text()
    page.wait_for_function("document.querySelector('#lookup .card img')?.naturalWidth > 0")
    save_screenshot(page, line.shots, "lookup")

    page.click("nav [data-view='audit']")
    page.wait_for_selector("#audit tbody tr:has-text('label')")
    for shot in ("line", "alarms", "review", "shift", "lookup"):
        assert (line.shots / f"{shot}.png").stat().st_size < 150_000


def test_every_view_fits_a_tablet_and_every_button_takes_a_gloved_finger(line: Line) -> None:
    page = line.pages["anna"]
    page.set_viewport_size({"width": 768, "height": 1024})
    try:
        for view in ("line", "alarms", "review", "shift", "lookup", "audit"):
            page.click(f"nav [data-view='{view}']")
            assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), view
            heights = page.eval_on_selector_all(
                "button, select, input[type=checkbox]",
                "nodes => nodes.filter(n => n.offsetParent).map(n => n.getBoundingClientRect().height)",
            )
            assert heights and min(heights) >= 36, (view, heights)  # checkboxes 36 px, the rest 56 px
    finally:
        page.set_viewport_size(PANEL)
