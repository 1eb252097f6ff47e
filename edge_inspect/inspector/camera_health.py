"""Camera health as the inspector sees it: when each camera's last frame arrived and its gateway's device
counters (`FrameHeader.health`).

The receive stage calls `CameraBook.seen` for every frame (a dict update under a lock, nothing else); the
Prometheus collector reads a snapshot at scrape time, and housekeeping saves one to the record store every
second for the plant outputs and the console. A camera that sends nothing is therefore visible everywhere
as a growing last-frame age: `silent` once it passes the camera's `silent_after_s`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from edge_inspect.bus.contracts import CameraHealth, FrameHeader
from edge_inspect.sinks.record_store import CameraReading


class CameraBook:
    """The newest reading per camera. Thread-safe; `seen` is the only call on the hot path."""

    def __init__(self, readings: Iterable[CameraReading] = ()) -> None:
        self._lock = threading.Lock()
        self._readings = {reading.camera_id: reading for reading in readings}
        self._version = 0

    def seen(self, header: FrameHeader, t_received_ns: int) -> None:
        with self._lock:
            previous = self._readings.get(header.camera_id)
            received = previous.frames_received + 1 if previous else 1
            self._readings[header.camera_id] = CameraReading(
                camera_id=header.camera_id,
                station=header.station,
                last_frame_ns=t_received_ns,
                frames_received=received,
                health=header.health or CameraHealth(),
                source_frame_id=header.source_frame_id,
            )
            self._version += 1

    def snapshot(self) -> tuple[int, list[CameraReading]]:
        """(version, readings): the version changes whenever a frame arrived, so savers skip idle seconds."""
        with self._lock:
            return self._version, sorted(self._readings.values(), key=lambda reading: reading.camera_id)


def camera_families(
    readings: Iterable[CameraReading], now_ns: int, silent_after_s: Callable[[str], float]
) -> list[Metric]:
    """The per-camera metric families of one scrape (empty families when no camera has been seen)."""
    counters = {
        "captured": CounterMetricFamily(
            "edgeinspect_camera_frames_captured",
            "Frames the camera's gateway took from its device since the gateway started.",
            labels=["camera"],
        ),
        "reconnects": CounterMetricFamily(
            "edgeinspect_camera_reconnects",
            "Times the gateway reopened its camera device or stream after a failure.",
            labels=["camera"],
        ),
        "underruns": CounterMetricFamily(
            "edgeinspect_camera_underruns",
            "Frames the camera produced that never reached its gateway (lost or incomplete buffers, "
            "gaps in the camera's frame ids).",
            labels=["camera"],
        ),
        "stale_events": CounterMetricFamily(
            "edgeinspect_camera_stale_events",
            "Times the camera's stream delivered nothing for longer than its gateway's watchdog allows.",
            labels=["camera"],
        ),
    }
    age = GaugeMetricFamily(
        "edgeinspect_camera_last_frame_age_seconds",
        "Seconds since the camera's last frame reached the inspector; grows while the camera is silent.",
        labels=["camera"],
    )
    silent = GaugeMetricFamily(
        "edgeinspect_camera_silent",
        "1 while the camera has sent nothing for longer than its silent_after_s, else 0.",
        labels=["camera"],
    )
    for reading in readings:
        labels = [reading.camera_id]
        for field, family in counters.items():
            family.add_metric(labels, getattr(reading.health, field))
        seconds = reading.age_s(now_ns)
        age.add_metric(labels, seconds)
        silent.add_metric(labels, 1.0 if seconds > silent_after_s(reading.camera_id) else 0.0)
    return [*counters.values(), age, silent]


def silence_limits(per_camera: Mapping[str, float], default_s: float) -> Callable[[str], float]:
    """Each camera's silence limit: its own where the config names it, else the default."""
    return lambda camera_id: per_camera.get(camera_id, default_s)


class CameraCollector(Collector):
    """Reads the book at scrape time, so the receive stage never touches a metric object per camera."""

    def __init__(
        self, book: CameraBook, silent_after_s: Callable[[str], float], clock: Callable[[], int]
    ) -> None:
        self._book = book
        self._silent_after_s = silent_after_s
        self._clock = clock

    def describe(self) -> list[Metric]:
        return camera_families([], 0, self._silent_after_s)

    def collect(self) -> list[Metric]:
        _, readings = self._book.snapshot()
        return camera_families(readings, self._clock(), self._silent_after_s)
