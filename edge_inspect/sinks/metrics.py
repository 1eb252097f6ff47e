"""Prometheus metrics of one inspector, in a registry of its own.

Nothing is registered in prometheus_client's global default registry: two inspectors (or two tests) in
one process never see each other's numbers. Names follow the Prometheus conventions: `edgeinspect_`
prefix, base units (seconds, bytes, ratios 0..1), counters exposed with `_total`.

GPU utilisation and memory are read from NVML (package nvidia-ml-py, module `pynvml`) at every scrape,
when it imports and finds a driver; otherwise there are no GPU metrics and one log line says why.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import ModuleType
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from edge_inspect.bus.contracts import STAGES, InspectionResult, ModelRef
from edge_inspect.logs import log_event

log = logging.getLogger(__name__)

BATCH_SIZE_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64)
# 0.1 ms (a queue hand-over) to 2 s (a cold GPU start); anything slower lands in +Inf.
STAGE_SECONDS_BUCKETS: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.0,
)
DELIVERY_OUTCOMES: tuple[str, ...] = ("delivered", "retry", "dead")
RECIPE_OUTCOMES: tuple[str, ...] = ("loaded", "refused")
GPU_LABELS: tuple[str, ...] = ("gpu", "name")


@dataclass(frozen=True)
class GpuReading:
    """One GPU as NVML saw it at one scrape; `index` is NVML's, which ignores CUDA_VISIBLE_DEVICES."""

    index: int
    name: str
    utilization: float  # 0..1, the share of the last sample period in which a kernel ran
    memory_used_bytes: int
    memory_total_bytes: int


def read_gpu(nvml: ModuleType, index: int) -> GpuReading:
    """Read one GPU; raises nvml.NVMLError."""
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    name = nvml.nvmlDeviceGetName(handle)
    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    return GpuReading(
        index=index,
        # Older nvidia-ml-py releases return bytes.
        name=name.decode() if isinstance(name, bytes) else name,
        utilization=nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0,
        memory_used_bytes=int(memory.used),
        memory_total_bytes=int(memory.total),
    )


def gpu_families(readings: Iterable[GpuReading]) -> list[GaugeMetricFamily]:
    """The GPU gauges of one scrape; with no readings, the families alone (what `describe` reports)."""
    utilization = GaugeMetricFamily(
        "edgeinspect_gpu_utilization_ratio",
        "Share of the last NVML sample period (1/6 s to 1 s) in which a kernel ran on the GPU, 0..1.",
        labels=GPU_LABELS,
    )
    used = GaugeMetricFamily(
        "edgeinspect_gpu_memory_used_bytes",
        "GPU memory in use, by every process on the GPU.",
        labels=GPU_LABELS,
    )
    total = GaugeMetricFamily(
        "edgeinspect_gpu_memory_total_bytes", "GPU memory installed.", labels=GPU_LABELS
    )
    for reading in readings:
        labels = [str(reading.index), reading.name]
        utilization.add_metric(labels, reading.utilization)
        used.add_metric(labels, reading.memory_used_bytes)
        total.add_metric(labels, reading.memory_total_bytes)
    return [utilization, used, total]


def start_nvml() -> ModuleType | None:
    """The initialised `pynvml` module, or None (and one INFO line saying why) when there is no NVML."""
    try:
        import pynvml
    except ImportError:
        log_event(
            log,
            logging.INFO,
            "gpu_metrics_off",
            reason="nvidia-ml-py is not installed; install the inspector extra for GPU metrics",
        )
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        log_event(
            log,
            logging.INFO,
            "gpu_metrics_off",
            reason=f"NVML did not start ({exc}); no NVIDIA driver or GPU visible to this process",
        )
        return None
    return pynvml


class NvmlCollector(Collector):
    """GPU gauges read from NVML at every scrape. A failed read is counted and logged, never raised: a GPU
    that stops answering must not take the inspector's other metrics down with it."""

    def __init__(self, nvml: ModuleType) -> None:
        self._nvml = nvml
        # Not registered anywhere: this collector exposes it, so it exists only where NVML does.
        self._errors = Counter(
            "edgeinspect_gpu_metric_errors",
            "NVML reads that failed during a scrape (the GPU's gauges are missing from that scrape).",
            registry=None,
        )
        self._failing = False

    def describe(self) -> list[Metric]:
        return [*gpu_families([]), *self._errors.describe()]

    def collect(self) -> list[Metric]:
        readings: list[GpuReading] = []
        failures: list[tuple[int | None, Exception]] = []
        try:
            count = self._nvml.nvmlDeviceGetCount()
        except self._nvml.NVMLError as exc:
            count, failures = 0, [(None, exc)]
        for index in range(count):
            try:
                readings.append(read_gpu(self._nvml, index))
            except self._nvml.NVMLError as exc:
                failures.append((index, exc))
        self._count_failures(failures)
        return [*gpu_families(readings), *self._errors.collect()]

    def _count_failures(self, failures: list[tuple[int | None, Exception]]) -> None:
        self._errors.inc(len(failures))
        # Scrapes repeat every few seconds: log when reads start failing, not at every scrape after that.
        if failures and not self._failing:
            gpu, exc = failures[0]
            log_event(
                log,
                logging.WARNING,
                "gpu_metrics_read_failed",
                gpu=gpu,
                error=str(exc),
                failed_reads=len(failures),
            )
        self._failing = bool(failures)


# A probe answers {check: "ok" | what is wrong}; the endpoint is 200 when every check says "ok", else 503.
Probe = Callable[[], dict[str, str]]


def probe_app(metrics_app: Callable, probes: Mapping[str, Probe]) -> Callable:
    """A WSGI app serving each probe at its path (`/healthz`, `/readyz`) as JSON and metrics elsewhere."""

    def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
        probe = probes.get(environ.get("PATH_INFO", ""))
        if probe is None:
            return metrics_app(environ, start_response)
        checks = probe()
        ok = all(value == "ok" for value in checks.values())
        body = json.dumps({"ok": ok, "checks": checks}).encode()
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        start_response("200 OK" if ok else "503 Service Unavailable", headers)
        return [body]

    return app


class ProbeCollector(Collector):
    """The probes as a gauge, read at scrape time: Prometheus cannot alert on `/readyz`'s JSON, so every
    check of every probe is also `edgeinspect_probe_ok{probe, check}` (1 while it says ok)."""

    def __init__(self, probes: Mapping[str, Probe]) -> None:
        self._probes = probes

    def collect(self) -> list[Metric]:
        family = GaugeMetricFamily(
            "edgeinspect_probe_ok",
            "1 while the probe's check says ok, else 0 (the checks of /healthz and /readyz).",
            labels=["probe", "check"],
        )
        for path, probe in self._probes.items():
            for check, state in probe().items():
                family.add_metric([path.strip("/"), check], 1.0 if state == "ok" else 0.0)
        return [family]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Scrapes every few seconds are not news."""


@dataclass
class MetricsServer:
    """A running `/metrics` endpoint; `port` is the real one, also when 0 was asked for."""

    addr: str
    port: int
    _server: WSGIServer
    _thread: threading.Thread

    def close(self) -> None:
        """Stop serving and free the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


class InspectorMetrics:
    """Every metric of the inspector. Thread-safe: prometheus_client locks each metric itself."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.frames_received = Counter(
            "edgeinspect_frames_received",
            "Frames taken off the bus, before any check.",
            ["camera"],
            registry=self.registry,
        )
        self.frames_inspected = Counter(
            "edgeinspect_frames_inspected",
            "Frames that got a verdict.",
            ["camera", "verdict"],
            registry=self.registry,
        )
        self.frames_dropped = Counter(
            "edgeinspect_frames_dropped",
            "Frames received but never inspected, by reason (e.g. queue full, stale).",
            ["camera", "reason"],
            registry=self.registry,
        )
        self.malformed_messages = Counter(
            "edgeinspect_malformed_messages",
            "Bus messages refused because they broke the frame contract, by ContractError reason.",
            ["reason"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "edgeinspect_queue_depth",
            "Frames waiting for inspection.",
            ["camera"],
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "edgeinspect_batch_size",
            "Frames per inference batch.",
            buckets=BATCH_SIZE_BUCKETS,
            registry=self.registry,
        )
        self.stage_duration = Histogram(
            "edgeinspect_stage_duration_seconds",
            "Time one frame spent in each pipeline stage; stage=total is capture to verdict.",
            ["stage", "device"],
            buckets=STAGE_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.mes_deliveries = Counter(
            "edgeinspect_mes_deliveries",
            "MES webhook POST outcomes: delivered, retry (will be tried again) or dead (gave up).",
            ["outcome"],
            registry=self.registry,
        )
        self.mes_outbox_pending = Gauge(
            "edgeinspect_mes_outbox_pending",
            "Results recorded but not yet delivered to the MES.",
            registry=self.registry,
        )
        self.mes_outbox_dead = Gauge(
            "edgeinspect_mes_outbox_dead",
            "MES dead letters: deliveries given up (an error status, or mes.max_attempts reached); "
            "`edge-inspect records --requeue-dead` sends them again.",
            registry=self.registry,
        )
        self.model_info = Info(
            "edgeinspect_model",
            "The model being served.",
            registry=self.registry,
        )
        self.stage_errors = Counter(
            "edgeinspect_stage_errors",
            "Batches whose preprocessing, inference or postprocessing raised; their parts became REVIEW.",
            ["stage"],
            registry=self.registry,
        )
        self.model_swaps = Counter(
            "edgeinspect_model_swaps",
            "Promoted model versions: swapped in, or rejected (hash or smoke inference failed).",
            ["outcome"],
            registry=self.registry,
        )
        self._add_output_metrics()
        self.line_alarms = Counter(
            "edgeinspect_line_alarms",
            "Line alarms raised by the recipe's rules (e.g. N NG parts in M minutes on one camera).",
            ["camera", "rule"],
            registry=self.registry,
        )
        self.recipe_reloads = Counter(
            "edgeinspect_recipe_reloads",
            "Recipe files loaded (a changed file took over) or refused (an error; the old recipe serves).",
            ["outcome"],
            registry=self.registry,
        )
        # Outcomes appear at 0 from the start, so that rate() and alerts work before the first event.
        for outcome in RECIPE_OUTCOMES:
            self.recipe_reloads.labels(outcome=outcome)
        for outcome in DELIVERY_OUTCOMES:
            self.mes_deliveries.labels(outcome=outcome)
        nvml = start_nvml()
        if nvml is not None:
            self.registry.register(NvmlCollector(nvml))

    def frame_received(self, camera: str) -> None:
        self.frames_received.labels(camera=camera).inc()

    def frame_dropped(self, camera: str, reason: str, count: int = 1) -> None:
        self.frames_dropped.labels(camera=camera, reason=reason).inc(count)

    def malformed_message(self, reason: str) -> None:
        self.malformed_messages.labels(reason=reason).inc()

    def set_queue_depth(self, camera: str, depth: int) -> None:
        self.queue_depth.labels(camera=camera).set(depth)

    def observe_batch(self, size: int) -> None:
        self.batch_size.observe(size)

    def observe_stage(self, stage: str, seconds: float, device: str = "cpu") -> None:
        if stage not in STAGES:
            raise ValueError(f"stage {stage!r} is not one of {STAGES}")
        self.stage_duration.labels(stage=stage, device=device).observe(seconds)

    def observe_result(self, result: InspectionResult, device: str = "cpu") -> None:
        """Count the verdict and record every stage time of the result (call once per result).

        The stage times come from `result.timings_ms`, so do not also `observe_stage` them yourself.
        """
        self.frames_inspected.labels(camera=result.camera_id, verdict=result.verdict).inc()
        for stage in STAGES:
            milliseconds: float = getattr(result.timings_ms, stage)
            self.observe_stage(stage, milliseconds / 1000.0, device)

    def stage_error(self, stage: str, count: int = 1) -> None:
        self.stage_errors.labels(stage).inc(count)

    def model_swap(self, outcome: str) -> None:
        self.model_swaps.labels(outcome=outcome).inc()

    def line_alarm(self, camera: str, rule: str) -> None:
        self.line_alarms.labels(camera=camera, rule=rule).inc()

    def recipe_reload(self, outcome: str) -> None:
        self.recipe_reloads.labels(outcome=outcome).inc()

    def set_model(self, model: ModelRef, family: str, provider: str) -> None:
        """Publish the served model; call again after a model swap (the old labels are replaced)."""
        self.model_info.info(
            {
                "name": model.name,
                "version": model.version,
                "sha256": model.sha256,
                "family": family,
                "provider": provider,
            }
        )

    def observe_deliveries(self, delivered: int, retried: int, dead: int) -> None:
        self.mes_deliveries.labels(outcome="delivered").inc(delivered)
        self.mes_deliveries.labels(outcome="retry").inc(retried)
        self.mes_deliveries.labels(outcome="dead").inc(dead)

    def set_outbox_pending(self, pending: int) -> None:
        self.mes_outbox_pending.set(pending)

    def set_outbox_dead(self, dead: int) -> None:
        self.mes_outbox_dead.set(dead)

    # Plant outputs (sinks/result_tail.py: MQTT, OPC UA) ------------------------------------------------

    def _add_output_metrics(self) -> None:
        self.output_published = Counter(
            "edgeinspect_output_published",
            "Results a plant output delivered (MQTT: PUBACK received; OPC UA: node values written).",
            ["output"],
            registry=self.registry,
        )
        self.output_lag = Gauge(
            "edgeinspect_output_lag_results",
            "Results recorded but not yet acknowledged by the output's peer (behind its cursor).",
            ["output"],
            registry=self.registry,
        )
        self.output_connected = Gauge(
            "edgeinspect_output_connected",
            "1 while the output is connected to its peer (MQTT broker) or serving (OPC UA server), else 0.",
            ["output"],
            registry=self.registry,
        )
        self.output_errors = Counter(
            "edgeinspect_output_errors",
            "Output failures by reason (disconnected, publish_failed, ...); the output retries.",
            ["output", "reason"],
            registry=self.registry,
        )

    def output_delivered(self, output: str, count: int = 1) -> None:
        self.output_published.labels(output=output).inc(count)

    def set_output_lag(self, output: str, lag: int) -> None:
        self.output_lag.labels(output=output).set(lag)

    def set_output_connected(self, output: str, connected: bool) -> None:
        self.output_connected.labels(output=output).set(1 if connected else 0)

    def output_error(self, output: str, reason: str) -> None:
        self.output_errors.labels(output=output, reason=reason).inc()

    def serve(
        self, port: int, addr: str = "127.0.0.1", probes: Mapping[str, Probe] | None = None
    ) -> MetricsServer:
        """Serve `/metrics` (and the `probes`, by path) over HTTP from a daemon thread; port 0 picks a free
        port (see `.port`).

        The default address is loopback: expose it on the network deliberately (addr="0.0.0.0").
        """

        class Server(ThreadingWSGIServer):
            address_family = socket.AF_INET6 if ":" in addr else socket.AF_INET

        if probes:
            self.registry.register(ProbeCollector(probes))
        app = probe_app(make_wsgi_app(self.registry), probes or {})
        server = make_server(addr, port, app, Server, handler_class=_QuietHandler)
        thread = threading.Thread(target=server.serve_forever, name="edge-inspect-metrics", daemon=True)
        thread.start()
        return MetricsServer(addr=addr, port=server.server_port, _server=server, _thread=thread)
