"""Vendor cameras through GenTL and harvesters, against the virtual GenTL producer that PyPI's `genicam` wheel
ships (viky.cti: three simulated cameras, serial numbers 0, 1 and 2, drawing a red, green and blue ball on
white; Mono8 or RGBa8, 100..800 pixels a side, 1..200 fps; no exposure, gain, offset or trigger features)."""

from __future__ import annotations

import logging
import re
import threading
import time
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from edge_inspect.bus.contracts import FrameHeader, parse_header, raw_pixels
from edge_inspect.bus.transport import FrameReceiver
from edge_inspect.camera_adapters.assemble import open_camera
from edge_inspect.camera_adapters.base import SourceError, SourceFrame, run_camera
from edge_inspect.camera_adapters.config import load_line_cameras
from edge_inspect.camera_adapters.genicam import GenICamSettings, Roi
from edge_inspect.camera_adapters.gentl import GenTLSettings, GenTLSource
from tests.camera_peers import viky_cti

SIZE = Roi(0, 0, 320, 240)  # the virtual cameras have no offsets: a region is a size


def gentl_source(serial: str | None = "0", **overrides: object) -> GenTLSource:
    values: dict[str, object] = {
        "pixel_format": "RGBa8",
        "frame_rate": 50.0,
        "roi": SIZE,
        "frame_timeout_s": 0.5,
        "reconnect_first_s": 0.2,
        "reconnect_max_s": 1.0,
    }
    camera = GenICamSettings(**{**values, **overrides})  # type: ignore[arg-type]
    return GenTLSource(GenTLSettings(cti=viky_cti(), serial_number=serial, camera=camera))


def take(source: GenTLSource, count: int) -> list[SourceFrame]:
    frames = iter(source)
    taken = [next(frames) for _ in range(count)]
    frames.close()
    return taken


def contiguous(frame_ids: list[int | None]) -> bool:
    return all(a is not None and b == a + 1 for a, b in pairwise(frame_ids))


def ball(image: np.ndarray) -> np.ndarray:
    """The pixels of the ball: everything that is not the white background."""
    return image[(image < 255).any(axis=2)]


@pytest.mark.timeout(60)
def test_configured_camera_streams_at_its_frame_rate_without_losing_a_frame() -> None:
    source = gentl_source()
    started = time.monotonic()
    frames = take(source, 100)
    elapsed = time.monotonic() - started
    assert contiguous([f.frame_id for f in frames])
    assert (source.health.reconnects, source.health.underruns, source.health.stale_events) == (0, 0, 0)
    # 100 frames at the configured 50 fps, not the camera's own 20.
    assert 1.5 < elapsed < 3.5
    # The producer has no timestamps: frames carry none rather than a made-up 0.
    assert all(f.t_source_ns is None for f in frames)
    for frame in frames[::25]:
        assert frame.image.shape == (SIZE.height, SIZE.width, 3) and frame.image.dtype == np.uint8


@pytest.mark.timeout(60)
def test_pixel_formats_arrive_in_the_frame_contract() -> None:
    """RGBa8 becomes BGR (the red camera's ball is red in channel 2, the green one's in channel 1); Mono8
    stays one channel."""
    for serial, channel in (("0", 2), ("1", 1)):
        pixels = ball(take(gentl_source(serial), 3)[-1].image)
        assert len(pixels) > 100
        others = [c for c in range(3) if c != channel]
        assert np.all(pixels[:, channel] == 255) and pixels[:, others].mean() < 200, serial
    mono = take(gentl_source("2", pixel_format="Mono8"), 3)[-1].image
    assert mono.shape == (SIZE.height, SIZE.width) and mono.dtype == np.uint8 and mono.min() < 255


@pytest.mark.timeout(60)
def test_the_camera_is_chosen_by_serial_number_or_refused_with_what_the_producer_offers() -> None:
    with pytest.raises(SourceError, match=re.escape("offers 3 cameras")) as many:
        gentl_source(serial=None)
    assert "choose one by serial_number or device_id" in str(many.value)
    with pytest.raises(SourceError, match=re.escape("no camera {'serial_number': '7'} behind")):
        gentl_source(serial="7")
    with pytest.raises(SourceError, match=re.escape("does not exist; install the vendor's GenTL package")):
        GenTLSource(GenTLSettings(cti=Path("/opt/nowhere/vendor.cti")))


@pytest.mark.timeout(60)
def test_settings_the_camera_cannot_take_are_refused_before_streaming() -> None:
    refusals = {
        "has no pixel format 'BayerRG8'; it offers ['RGBa8', 'Mono8']": {"pixel_format": "BayerRG8"},
        "frame_rate=500.0 is outside camera viky.cti:0's range 1.0..200.0": {"frame_rate": 500.0},
        "ROI width=5000 is outside": {"roi": Roi(0, 0, 5000, 240)},
        "has no OffsetX feature, needed for an ROI offset": {"roi": Roi(16, 0, 320, 240)},
        "has no ExposureTime/ExposureTimeAbs feature, needed for exposure_us": {"exposure_us": 800.0},
        "has no TriggerMode feature, needed for a trigger": {"trigger": "software"},
    }
    for message, overrides in refusals.items():
        with pytest.raises(SourceError, match=re.escape(message)):
            gentl_source(**overrides)
    # A refused session released the camera and unloaded the producer: the camera opens at once.
    take(gentl_source(), 1)


def unplug(source: GenTLSource) -> None:
    """Close the device's GenTL handle under the running stream: what the producer reports when a camera
    is unplugged (every call on the device then fails with an invalid handle)."""
    session = source._session
    assert session is not None
    session._acquirer.device.module.close()


@pytest.mark.timeout(60)
def test_a_camera_lost_under_the_stream_is_reopened(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="edge_inspect.camera_adapters")
    source = gentl_source()
    frames = iter(source)
    before = [next(frames) for _ in range(10)]
    unplug(source)
    lost_at = time.monotonic()
    after = [next(frames) for _ in range(10)]
    recovered_s = time.monotonic() - lost_at
    frames.close()
    assert contiguous([f.frame_id for f in before]) and contiguous([f.frame_id for f in after])
    assert source.health.reconnects == 1 and recovered_s < 5
    # The reopened camera counts its frames from 1 again, so the outage is counted by the time: the frames
    # it would have made at 50 fps from the last frame to the reopening (at least the 0.2 s back-off).
    assert after[0].frame_id is not None and after[0].frame_id < before[-1].frame_id
    assert 0.2 * 50 - 1 <= source.health.underruns <= recovered_s * 50
    lost = [r for r in caplog.records if r.getMessage() == "camera_lost"]
    assert lost and "fetching a buffer failed" in lost[0].fields["error"]
    assert [r for r in caplog.records if r.getMessage() == "camera_reconnected"]


@pytest.mark.timeout(60)
def test_a_gentl_entry_of_a_line_config_streams_to_the_frame_bus(tmp_path: Path) -> None:
    """A `source = "gentl"` camera entry, loaded as a gateway loads it, through `run_camera` to a real frame
    receiver: the camera's frame ids on the bus, the gateway's own pacing."""
    received: list[FrameHeader] = []
    with FrameReceiver("tcp://127.0.0.1:*") as receiver:
        line = tmp_path / "line.toml"
        line.write_text(
            f'[[cameras]]\nid = "vendor-1"\nstation = "bench"\nendpoint = "{receiver.endpoint}"\n'
            f'source = "gentl"\ncti = "{viky_cti()}"\nserial_number = "1"\npixel_format = "Mono8"\n'
            "frame_rate = 100.0\nroi = { x = 0, y = 0, width = 320, height = 240 }\nfps = 0\n",
            encoding="utf-8",
        )
        entry = load_line_cameras(line).camera("vendor-1")
        stop = threading.Event()
        opened = open_camera(entry, stop.is_set)
        gateway = threading.Thread(target=run_camera, args=(opened.source, opened.config, stop))
        gateway.start()
        deadline = time.monotonic() + 20
        while len(received) < 30 and time.monotonic() < deadline:
            parts = receiver.recv(timeout_ms=200)
            if parts is not None:
                header = parse_header(parts[0])
                assert raw_pixels(header, parts[1]).shape == (240, 320, 1)
                received.append(header)
        stop.set()
        gateway.join(timeout=20)
        opened.close()
    assert not gateway.is_alive() and len(received) == 30
    assert [h.camera_id for h in received] == ["vendor-1"] * 30
    assert contiguous([h.source_frame_id for h in received])
