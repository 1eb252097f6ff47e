from __future__ import annotations

import logging
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from types import ModuleType, SimpleNamespace

import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from edge_inspect.bus.contracts import STAGES, InspectionResult, ModelRef, StageTimings
from edge_inspect.sinks.metrics import InspectorMetrics, MetricsServer

MODEL = ModelRef(name="elpv-cls", version="1.2.0", sha256="ab" * 32)


def make_result(camera_id: str, verdict: str) -> InspectionResult:
    return InspectionResult(
        camera_id=camera_id,
        seq=1,
        part_id="P1",
        station="st-1",
        t_capture_ns=1,
        verdict=verdict,
        score=0.7,
        threshold=0.5,
        defects=[],
        model=MODEL,
        timings_ms=StageTimings(
            transport=0.2, queue=0.05, decode=0.5, preprocess=1.5, infer=6.0, postprocess=0.3, total=9.0
        ),
    )


def scrape(server: MetricsServer) -> list[Sample]:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def value(samples: list[Sample], metric: str, /, **labels: str) -> float | None:
    matches = [s.value for s in samples if s.name == metric and s.labels == labels]
    return matches[0] if matches else None


@pytest.fixture
def metrics() -> InspectorMetrics:
    return InspectorMetrics()


@pytest.fixture
def server(metrics: InspectorMetrics) -> Iterator[MetricsServer]:
    started = metrics.serve(port=0)
    yield started
    started.close()


def test_scrape_reports_every_metric_with_labels(metrics: InspectorMetrics, server: MetricsServer) -> None:
    assert server.port != 0
    for _ in range(3):
        metrics.frame_received("cam1")
    metrics.frame_received("cam2")
    metrics.observe_result(make_result("cam1", "NG"), device="cuda")
    metrics.observe_result(make_result("cam1", "NG"), device="cuda")
    metrics.observe_result(make_result("cam2", "OK"), device="cuda")
    metrics.frame_dropped("cam2", "queue_full")
    metrics.malformed_message("bad_json")
    metrics.set_queue_depth("cam1", 4)
    metrics.observe_batch(3)
    metrics.observe_batch(64)
    metrics.observe_stage("decode", 0.0004)
    metrics.stage_error("infer")
    metrics.observe_deliveries(delivered=5, retried=2, dead=1)
    metrics.set_outbox_pending(7)
    metrics.set_model(MODEL, family="classifier", provider="CUDAExecutionProvider")

    samples = scrape(server)

    assert value(samples, "edgeinspect_frames_received_total", camera="cam1") == 3
    assert value(samples, "edgeinspect_frames_received_total", camera="cam2") == 1
    assert value(samples, "edgeinspect_frames_inspected_total", camera="cam1", verdict="NG") == 2
    assert value(samples, "edgeinspect_frames_inspected_total", camera="cam2", verdict="OK") == 1
    assert value(samples, "edgeinspect_frames_dropped_total", camera="cam2", reason="queue_full") == 1
    assert value(samples, "edgeinspect_malformed_messages_total", reason="bad_json") == 1
    assert value(samples, "edgeinspect_queue_depth", camera="cam1") == 4
    assert value(samples, "edgeinspect_stage_errors_total", stage="infer") == 1
    assert value(samples, "edgeinspect_mes_deliveries_total", outcome="delivered") == 5
    assert value(samples, "edgeinspect_mes_deliveries_total", outcome="retry") == 2
    assert value(samples, "edgeinspect_mes_deliveries_total", outcome="dead") == 1
    assert value(samples, "edgeinspect_mes_outbox_pending") == 7
    assert (
        value(
            samples,
            "edgeinspect_model_info",
            name="elpv-cls",
            version="1.2.0",
            sha256="ab" * 32,
            family="classifier",
            provider="CUDAExecutionProvider",
        )
        == 1
    )

    batch_buckets = {s.labels["le"]: s.value for s in samples if s.name == "edgeinspect_batch_size_bucket"}
    assert list(batch_buckets) == ["1.0", "2.0", "4.0", "8.0", "16.0", "32.0", "64.0", "+Inf"]
    assert (batch_buckets["2.0"], batch_buckets["4.0"], batch_buckets["64.0"]) == (0, 1, 2)
    assert value(samples, "edgeinspect_batch_size_sum") == 67

    for stage in STAGES:
        assert value(samples, "edgeinspect_stage_duration_seconds_count", stage=stage, device="cuda") == 3
    assert value(samples, "edgeinspect_stage_duration_seconds_sum", stage="infer", device="cuda") == (
        pytest.approx(0.018)
    )
    assert value(samples, "edgeinspect_stage_duration_seconds_count", stage="decode", device="cpu") == 1
    infer_buckets = [
        s
        for s in samples
        if s.name == "edgeinspect_stage_duration_seconds_bucket" and s.labels["stage"] == "infer"
    ]
    assert float(infer_buckets[0].labels["le"]) == pytest.approx(0.0001)
    assert float(infer_buckets[-2].labels["le"]) == 2.0
    # 6 ms lands between the 5 ms and 10 ms buckets.
    by_le = {float(s.labels["le"]): s.value for s in infer_buckets}
    assert (by_le[0.005], by_le[0.01]) == (0, 3)


def test_delivery_outcomes_start_at_zero(metrics: InspectorMetrics, server: MetricsServer) -> None:
    samples = scrape(server)
    for outcome in ("delivered", "retry", "dead"):
        assert value(samples, "edgeinspect_mes_deliveries_total", outcome=outcome) == 0


def test_instances_do_not_share_state(metrics: InspectorMetrics, server: MetricsServer) -> None:
    other = InspectorMetrics()
    other_server = other.serve(port=0)
    try:
        other.frame_received("cam9")
        other.observe_result(make_result("cam9", "OK"))
        assert value(scrape(other_server), "edgeinspect_frames_received_total", camera="cam9") == 1
        mine = scrape(server)
        assert not [s for s in mine if s.labels.get("camera") == "cam9"]
        assert (
            prometheus_client.REGISTRY.get_sample_value(
                "edgeinspect_frames_received_total", {"camera": "cam9"}
            )
            is None
        )
    finally:
        other_server.close()


def test_unknown_stage_is_refused(metrics: InspectorMetrics) -> None:
    with pytest.raises(ValueError, match="stage"):
        metrics.observe_stage("warmup", 0.1)


def test_close_frees_the_port(metrics: InspectorMetrics) -> None:
    server = metrics.serve(port=0)
    port = server.port
    assert scrape(server)
    server.close()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
    again = metrics.serve(port=port)
    try:
        assert again.port == port
        assert value(scrape(again), "edgeinspect_mes_deliveries_total", outcome="dead") == 0
    finally:
        again.close()


class FakeNvmlError(Exception):
    pass


class FakeNvml(ModuleType):
    """A stand-in for the pynvml module, with GPUs given as (name, utilisation %, used bytes, total bytes);
    reading a GPU whose index is in `failing` raises its NVMLError."""

    NVMLError = FakeNvmlError

    def __init__(self, gpus: list[tuple[str, int, int, int]], failing: frozenset[int] = frozenset()) -> None:
        super().__init__("pynvml")
        self.gpus, self.failing, self.initialised = gpus, failing, False

    def nvmlInit(self) -> None:
        self.initialised = True

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        if index in self.failing:
            raise FakeNvmlError("GPU is lost")
        return index

    def nvmlDeviceGetName(self, handle: int) -> bytes:
        # Bytes, as older nvidia-ml-py releases return.
        return self.gpus[handle][0].encode()

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(gpu=self.gpus[handle][1], memory=0)

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        _, _, used, total = self.gpus[handle]
        return SimpleNamespace(used=used, total=total, free=total - used)


def exposition(metrics: InspectorMetrics) -> list[Sample]:
    text = prometheus_client.generate_latest(metrics.registry).decode()
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


GPU_GAUGES = (
    "edgeinspect_gpu_utilization_ratio",
    "edgeinspect_gpu_memory_used_bytes",
    "edgeinspect_gpu_memory_total_bytes",
)


def test_gpu_gauges_come_from_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    nvml = FakeNvml([("NVIDIA H100", 37, 5 * 2**30, 80 * 2**30), ("NVIDIA L4", 0, 2**20, 24 * 2**30)])
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    metrics = InspectorMetrics()
    assert nvml.initialised
    samples = exposition(metrics)
    h100, l4 = {"gpu": "0", "name": "NVIDIA H100"}, {"gpu": "1", "name": "NVIDIA L4"}
    assert value(samples, "edgeinspect_gpu_utilization_ratio", **h100) == pytest.approx(0.37)
    assert value(samples, "edgeinspect_gpu_memory_used_bytes", **h100) == 5 * 2**30
    assert value(samples, "edgeinspect_gpu_memory_total_bytes", **h100) == 80 * 2**30
    assert value(samples, "edgeinspect_gpu_utilization_ratio", **l4) == 0
    assert value(samples, "edgeinspect_gpu_memory_total_bytes", **l4) == 24 * 2**30
    assert value(samples, "edgeinspect_gpu_metric_errors_total") == 0
    # Read again at every scrape, not once at start.
    monkeypatch.setattr(
        nvml, "nvmlDeviceGetUtilizationRates", lambda index: SimpleNamespace(gpu=90, memory=0)
    )
    assert value(exposition(metrics), "edgeinspect_gpu_utilization_ratio", **h100) == pytest.approx(0.9)


@pytest.mark.parametrize("cause", ["not installed", "no driver"])
def test_without_nvml_there_are_no_gpu_metrics_and_one_line_says_why(
    cause: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    if cause == "not installed":
        # None in sys.modules makes the import fail, as without nvidia-ml-py.
        monkeypatch.setitem(sys.modules, "pynvml", None)
    else:
        nvml = FakeNvml([])

        def no_driver() -> None:
            raise FakeNvmlError("NVML Shared Library Not Found")

        monkeypatch.setattr(nvml, "nvmlInit", no_driver)
        monkeypatch.setitem(sys.modules, "pynvml", nvml)
    caplog.set_level(logging.INFO, logger="edge_inspect")
    metrics = InspectorMetrics()
    names = {sample.name for sample in exposition(metrics)}
    assert not {name for name in names if name.startswith("edgeinspect_gpu_")}
    lines = [record for record in caplog.records if record.getMessage() == "gpu_metrics_off"]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO
    reason = lines[0].fields["reason"]  # type: ignore[attr-defined]
    assert ("nvidia-ml-py" in reason) if cause == "not installed" else ("Library Not Found" in reason)


def test_an_nvml_error_during_a_scrape_is_counted_not_raised(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    nvml = FakeNvml([("GPU A", 10, 1, 8), ("GPU B", 20, 2, 8)], failing=frozenset({0}))
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    metrics = InspectorMetrics()
    metrics.frame_received("cam1")
    caplog.set_level(logging.INFO, logger="edge_inspect")
    for scrape_number in (1, 2):
        samples = exposition(metrics)
        assert value(samples, "edgeinspect_frames_received_total", camera="cam1") == 1
        assert value(samples, "edgeinspect_gpu_memory_used_bytes", gpu="1", name="GPU B") == 2
        assert not [s for s in samples if s.labels.get("gpu") == "0"]
        assert value(samples, "edgeinspect_gpu_metric_errors_total") == scrape_number

    def lost() -> int:
        raise FakeNvmlError("driver gone")

    monkeypatch.setattr(nvml, "nvmlDeviceGetCount", lost)
    samples = exposition(metrics)
    assert not [s for s in samples if s.name in GPU_GAUGES]
    assert value(samples, "edgeinspect_gpu_metric_errors_total") == 3
    # A failing streak is logged once, when it starts.
    warnings = [record for record in caplog.records if record.getMessage() == "gpu_metrics_read_failed"]
    assert len(warnings) == 1 and warnings[0].fields == {  # type: ignore[attr-defined]
        "gpu": 0,
        "error": "GPU is lost",
        "failed_reads": 1,
    }
