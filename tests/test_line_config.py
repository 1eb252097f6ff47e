"""The complete line config the README shows (config/plant-line.toml: a GigE Vision camera, an RTSP camera,
OPC UA and MQTT outputs, shift reports, a recipe) loads on both sides: the inspector's and each gateway's;
its errors name the file, line and key; a gateway runs an entry of a line config from the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edge_inspect.camera_adapters.aravis import AravisSettings
from edge_inspect.camera_adapters.config import CameraConfigError, load_line_cameras
from edge_inspect.camera_adapters.rtsp import RtspSettings
from edge_inspect.inspector.config import ConfigError, load_config
from edge_inspect.inspector.service import Inspector
from edge_inspect.sinks.record_store import RecordStore
from tests.helpers import ROOT, loopback_config, wait_until

LINE = ROOT / "config" / "plant-line.toml"
RECIPE = ROOT / "config" / "recipes" / "plant-line.toml"


def test_the_readme_shows_the_line_config_and_its_recipe_as_they_are() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for path in (LINE, RECIPE):
        assert path.read_text(encoding="utf-8").strip() in readme, f"README.md must show {path.name} verbatim"


def test_the_inspector_reads_the_whole_line() -> None:
    config = load_config(LINE)
    assert (config.mqtt.host, config.opcua.endpoint) == ("127.0.0.1", "opc.tcp://127.0.0.1:4840/edgeinspect/")
    assert config.rules.recipe == Path("config/recipes/plant-line.toml")
    assert set(config.shifts.calendar) == {"early", "late", "night"}
    assert [camera.id for camera in config.cameras] == ["gige-top", "ip-side"]
    silent_after = config.silent_after_s()
    # [camera_defaults] also covers a camera that sends frames without an entry of its own.
    assert (silent_after("gige-top"), silent_after("a camera not in the file")) == (5.0, 5.0)


def test_each_gateway_reads_its_camera_with_the_defaults_merged_under_it() -> None:
    cameras = load_line_cameras(LINE)
    gige, ip = cameras.camera("gige-top"), cameras.camera("ip-side")
    assert gige.station == ip.station == "station-1"
    assert gige.state_dir == Path("/var/lib/edge-inspect/gateways")
    settings = gige.settings()
    assert isinstance(settings, AravisSettings)
    assert (settings.address, settings.packet_size) == ("192.168.10.21", 9000)
    assert (settings.camera.pixel_format, settings.camera.trigger, settings.camera.roi.width) == (
        "BayerRG8",
        "line",
        1280,
    )
    assert gige.part_ids is not None and gige.part_ids.source == "opcua"
    rtsp = ip.settings()
    assert isinstance(rtsp, RtspSettings) and (rtsp.transport, rtsp.stale_after_s) == ("tcp", 3.0)
    assert (ip.delivery, ip.encoding, ip.fps, ip.part_ids.match) == ("latest", "jpeg", 5.0, "latest")
    with pytest.raises(KeyError, match="known: gige-top, ip-side"):
        cameras.camera("gige-bottom")


def test_errors_name_the_file_line_and_key_on_both_sides(tmp_path: Path) -> None:
    text = LINE.read_text(encoding="utf-8")
    bad = tmp_path / "line.toml"
    bad.write_text(text.replace('pixel_format = "BayerRG8"', 'pixel_fromat = "BayerRG8"'), encoding="utf-8")
    line = next(n for n, row in enumerate(bad.read_text().splitlines(), 1) if row.startswith("pixel_fromat"))
    expected = f"{bad}:{line}: cameras.0.pixel_fromat: unknown key; known keys:"
    with pytest.raises(ConfigError, match="pixel_format") as inspector_error:
        load_config(bad)
    with pytest.raises(CameraConfigError) as gateway_error:
        load_line_cameras(bad)
    for error in (inspector_error, gateway_error):
        assert expected in str(error.value) and "exposure_us" in str(error.value)
    bad.write_text(text.replace('id = "ip-side"', 'id = "gige-top"'), encoding="utf-8")
    with pytest.raises(CameraConfigError, match="camera id 'gige-top' appears twice"):
        load_line_cameras(bad)


def test_a_gateway_runs_an_entry_of_a_line_config(toy_map_model_dir: Path, tmp_path: Path) -> None:
    """`edge-inspect camera --config FILE --camera ID` takes source, publishing and defaults from the file."""
    images = tmp_path / "parts"
    images.mkdir()
    import cv2
    import numpy as np

    for n in range(4):
        cv2.imwrite(str(images / f"part-{n}.png"), np.full((24, 32), 30 * n, np.uint8))
    with Inspector(
        loopback_config(tmp_path / "inspector", {"model.package": toy_map_model_dir})
    ) as inspector:
        line = tmp_path / "line.toml"
        line.write_text(
            f'[camera_defaults]\nstation = "st-9"\nendpoint = "{inspector.receiver.endpoint}"\nfps = 50.0\n\n'
            f'[[cameras]]\nid = "replay-1"\nsource = "folder"\npath = "{images}"\ndrain_s = 10.0\n',
            encoding="utf-8",
        )
        run = subprocess.run(
            [sys.executable, "-m", "edge_inspect", "camera", "--config", str(line), "--camera", "replay-1"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        assert run.returncode == 0, run.stderr
        stats = json.loads(run.stdout.strip().splitlines()[-1])
        assert (stats["camera_id"], stats["source"], stats["acked"]) == ("replay-1", "folder", 4)

        def recorded() -> list[tuple[str, str | None]]:
            with RecordStore(inspector.config.db_path) as store:
                return sorted((r.station, r.part_id) for r in store.query(limit=10))

        wait_until(lambda: len(recorded()) == 4, 10, "4 results")
        assert recorded() == [("st-9", f"part-{n}") for n in range(4)]
    missing = subprocess.run(
        [sys.executable, "-m", "edge_inspect", "camera", "--config", str(line), "--camera", "nope"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert missing.returncode == 2 and "no camera 'nope'" in missing.stderr


def test_a_gateway_runs_an_rtsp_camera_from_the_command_line(toy_map_model_dir: Path, tmp_path: Path) -> None:
    """`edge-inspect camera rtsp URL` against a real GStreamer RTSP server: paced by the camera, every frame
    carries the stream's own frame id, and SIGTERM ends it with its statistics."""
    import signal

    from tests.rtsp_peer import RtspCamera as RtspServer

    server = RtspServer()
    server.start()
    config = loopback_config(tmp_path, {"model.package": toy_map_model_dir})
    try:
        with Inspector(config) as inspector:
            command = [sys.executable, "-m", "edge_inspect", "camera", "rtsp", server.url]
            command += ["--endpoint", inspector.receiver.endpoint, "--camera-id", "ip-1"]
            command += ["--delivery", "latest"]
            gateway = subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=ROOT,
            )
            try:
                wait_until(lambda: inspector.summary()["inspected"] >= 10, 30, "10 RTSP frames judged")
            finally:
                gateway.send_signal(signal.SIGTERM)
                out, err = gateway.communicate(timeout=30)
    finally:
        server.stop()
    assert gateway.returncode == 0, err
    stats = json.loads(out.strip().splitlines()[-1])
    assert (stats["camera_id"], stats["source"]) == ("ip-1", "rtsp") and stats["captured"] >= 10
    assert "Connection refused" not in err  # FFmpeg's own stderr lines are silenced; our events are JSON
