"""The inspector service (`edge-inspect serve`): the stages wired into threads.

    receiver thread   bus → receive.validate → per-camera queues (back-pressure / supersede)
    prepare thread    queues → micro-batch → decode → preprocess (overlaps the previous batch's inference)
    infer thread      infer → postprocess → rules
    sink thread       archive NG/REVIEW images → SQLite results + MES outbox (one transaction) → PUB
    deliverer thread  MES outbox → webhook (at least once, survives restarts)
    metrics server    Prometheus /metrics

Every frame that passes validation ends as exactly one result (an inference failure becomes a REVIEW
result that names the error) and is written before it is published or delivered. A graceful stop
drains everything already accepted.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import queue
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_inspect.bus.contracts import (
    VERDICTS,
    ContractError,
    Defect,
    InspectionResult,
    ModelRef,
    StageTimings,
)
from edge_inspect.inspector.config import InspectorConfig
from edge_inspect.inspector.device.frame_path import (
    DeviceFramePath,
    FramePlan,
    choose_frame_path,
    host_image,
    probe_device_path,
)
from edge_inspect.inspector.rules import NORMALISED_THRESHOLD
from edge_inspect.logs import log_event
from edge_inspect.models.package import ModelCard, ModelPackage
from edge_inspect.sampling import stable_fraction

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

ARCHIVED_VERDICTS = ("NG", "REVIEW")


@dataclass(frozen=True)
class ActiveModel:
    """Everything one model version needs to judge a batch; replaced whole on a swap.

    `model` is an `infer.OnnxModel` on the host path and a `runtimes.DeviceRuntime` on the device path;
    `device` ("cuda" or "cpu") labels the stage histograms, `provider` names what runs the graph.
    """

    model: Any
    card: ModelCard
    ref: ModelRef
    device: str
    provider: str


def load_active(package_dir: Path, config: InspectorConfig, plan: FramePlan) -> ActiveModel:
    """Load, verify (hash) and smoke-test a package for the inspector's frame path; raises if it must not
    serve."""
    from edge_inspect.models.package import load_package

    package = load_package(package_dir)
    card = package.card
    recipe = card.preprocess
    smoke_shape = (2, recipe.channels, recipe.height, recipe.width)
    smoke = np.random.default_rng(0).standard_normal(smoke_shape).astype(np.float32)
    if plan.path == "device":
        active, score = _load_on_device(package, config, plan, smoke)
    else:
        active, score = _load_on_host(package, config, smoke)
    if score.shape != (2,) or not np.isfinite(score).all():
        raise RuntimeError(
            f"model {card.name} {card.version} failed its smoke inference (score shape {score.shape}, "
            f"finite: {bool(np.isfinite(score).all())}); it was not loaded"
        )
    return active


def _load_on_host(
    package: ModelPackage, config: InspectorConfig, smoke: np.ndarray
) -> tuple[ActiveModel, np.ndarray]:
    from edge_inspect.inspector.infer import load_model

    model = load_model(package, config.inference.device, config.inference.threads)
    score = np.asarray(model.run(smoke)[package.card.score_output])
    device = "cuda" if model.provider.startswith("CUDA") else "cpu"
    return ActiveModel(model, package.card, model_ref(package.card), device, model.provider), score


def _load_on_device(
    package: ModelPackage, config: InspectorConfig, plan: FramePlan, smoke: np.ndarray
) -> tuple[ActiveModel, np.ndarray]:
    """A device runtime, smoke-tested the way it serves: from a batch already on its device."""
    import torch

    from edge_inspect.inspector.device.runtimes import load_runtime
    from edge_inspect.inspector.device.runtimes.base import fetch_outputs

    assert plan.device is not None
    runtime = load_runtime(
        package, plan.runtime, plan.device, config.inference.cuda_graph, config.inference.threads
    )
    batch = torch.from_numpy(smoke).to(runtime.device, runtime.input_dtype)
    score, _ = fetch_outputs(runtime.run_device(batch), package.card.score_output, None, ())
    provider = runtime.provider if plan.runtime == "ort" else "torch"
    active = ActiveModel(runtime, package.card, model_ref(package.card), runtime.device.type, provider)
    return active, score


def model_ref(card: ModelCard) -> ModelRef:
    return ModelRef(card.name, card.version, card.onnx_sha256)


@dataclass(frozen=True)
class PreparedBatch:
    """A decoded, preprocessed batch waiting for inference, with the model chosen for it. On the device
    path `inputs` is the device tensor, held here until inference has read it."""

    active: ActiveModel
    frames: list[Any]
    images: list[np.ndarray | torch.Tensor | None]
    decode_ms: list[float]
    inputs: np.ndarray | torch.Tensor | None
    preprocess_ms: float
    t_batch_ns: int
    # Set when decoding or preprocessing the batch raised: its frames become REVIEW results naming it.
    failure: str | None = None


@dataclass(frozen=True)
class Outcome:
    """One judged frame on its way to the sinks, with its image in host memory when it is to be archived."""

    result: InspectionResult
    archive_image: np.ndarray | None
    device: str


def should_archive(result: InspectionResult, ok_rate: float) -> bool:
    """NG and REVIEW always; OK parts at `ok_rate`, chosen by a hash of the result id (reproducible)."""
    if result.verdict in ARCHIVED_VERDICTS:
        return True
    return ok_rate > 0 and stable_fraction(result.result_id) < ok_rate


def image_to_archive(
    result: InspectionResult, image: np.ndarray | torch.Tensor | None, ok_rate: float
) -> np.ndarray | None:
    """The image to archive with `result` (see should_archive), in host memory; None when it is not archived.
    Decided when judging, so a JPEG decoded on the device is copied back only for the parts archived, and
    device memory is not held while results wait for the sinks."""
    if image is None:  # the batch failed before its frames were decoded
        return None
    return host_image(image) if should_archive(result, ok_rate) else None


class SeqTracker:
    """Per-camera sequence numbers: a jump forward is frames lost before they reached us."""

    def __init__(self) -> None:
        self._last: dict[str, int] = {}

    def gap(self, camera_id: str, seq: int) -> int:
        last = self._last.get(camera_id)
        self._last[camera_id] = seq
        if last is None or seq <= last:
            # First frame, or the camera restarted and began counting again.
            return 0
        return seq - last - 1


class Inspector:
    """Owns every resource of a running inspector; `start()` then `stop()` (or use as a context manager)."""

    def __init__(self, config: InspectorConfig) -> None:
        import zmq

        from edge_inspect.bus.transport import FrameReceiver
        from edge_inspect.inspector.batching import CameraQueues
        from edge_inspect.sinks.metrics import InspectorMetrics

        self.config = config
        config.records.workdir.mkdir(parents=True, exist_ok=True)
        self.metrics = InspectorMetrics()
        self._promoted_version: str | None = None
        self.plan = plan_frame_path(config)
        self.active = load_active(self._initial_package_dir(), config, self.plan)
        # Every model a swap brings is loaded for the same plan, so onto this same device.
        self._device_path = DeviceFramePath(self.active.model.device) if self.plan.path == "device" else None
        self.metrics.set_model(self.active.ref, self.active.card.family, self.active.provider)
        self.metrics_server = (
            self.metrics.serve(config.metrics.port, config.metrics.address)
            if config.metrics.port is not None
            else None
        )
        self._zmq = zmq.Context()
        self.receiver = FrameReceiver(config.bus.bind, context=self._zmq)
        self._publisher = None
        if config.bus.results:
            self._publisher = self._zmq.socket(zmq.PUB)
            self._publisher.setsockopt(zmq.LINGER, 1000)
            self._publisher.bind(config.bus.results)
        self.results_endpoint = (
            self._publisher.getsockopt(zmq.LAST_ENDPOINT).decode() if self._publisher else None
        )
        self.queues = CameraQueues(config.batching.queue_depth, self._count_drop)
        # One batch prepared ahead of the one being inferred: enough to overlap, little added latency.
        self._prepared: queue.Queue[PreparedBatch | None] = queue.Queue(maxsize=1)
        self._outcomes: queue.Queue[list[Outcome] | None] = queue.Queue(maxsize=8)
        self._stop_receiving = threading.Event()
        self._receiver_done = threading.Event()
        self._threads: list[threading.Thread] = []
        self._deliverer: Any = None
        self._seq = SeqTracker()

    # -- lifetime ---------------------------------------------------------------------------------
    def start(self) -> None:
        if self.config.mes.url:
            # Started before the sink thread, so the very first results already get outbox rows.
            from edge_inspect.sinks.mes_webhook import WebhookConfig, WebhookDeliverer

            self._deliverer = WebhookDeliverer(
                self.config.db_path,
                WebhookConfig(
                    url=self.config.mes.url,
                    initial_backoff_s=min(1.0, self.config.mes.max_backoff_s),
                    max_backoff_s=self.config.mes.max_backoff_s,
                ),
                metrics=self.metrics,
            )
            self._deliverer.start()
        if self.config.model.registry is not None:
            self._threads.append(threading.Thread(target=self._watch_registry, name="edge-inspect-registry"))
        for name, target in (
            ("receiver", self._receive_loop),
            ("prepare", self._prepare_loop),
            ("infer", self._infer_loop),
            ("sink", self._sink_loop),
        ):
            self._threads.append(threading.Thread(target=target, name=f"edge-inspect-{name}", daemon=True))
        for thread in self._threads:
            thread.start()
        log_event(
            log,
            logging.WARNING if self.active.device == "cpu" else logging.INFO,
            "inspector_started",
            model=f"{self.active.card.name}:{self.active.card.version}",
            frame_path=self.plan.path,
            runtime=self.plan.runtime,
            cuda_graph=self.config.inference.cuda_graph and self.plan.path == "device",
            device=self.active.device,
            provider=self.active.provider,
            why=self.plan.reason,
            bind=self.receiver.endpoint,
            results=self.results_endpoint,
            metrics_port=self.metrics_server.port if self.metrics_server else None,
            db=str(self.config.db_path),
        )

    def stop(self) -> None:
        """Stop receiving, judge and record everything already accepted, then release every resource."""
        self._stop_receiving.set()
        for thread in self._threads:
            thread.join()
        self._threads.clear()
        if self._deliverer is not None:
            self._deliverer.stop()
        self.receiver.close()
        if self._publisher is not None:
            self._publisher.close()
        self._zmq.term()
        if self.metrics_server is not None:
            self.metrics_server.close()

    def __enter__(self) -> Inspector:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def summary(self) -> dict[str, Any]:
        """Totals since start, read from the Prometheus registry: the one place the counts live."""
        totals: dict[str, Counter] = {
            name: Counter() for name in ("received", "inspected", "dropped", "malformed")
        }
        families = {
            "edgeinspect_frames_received_total": ("received", None),
            "edgeinspect_frames_inspected_total": ("inspected", "verdict"),
            "edgeinspect_frames_dropped_total": ("dropped", "reason"),
            "edgeinspect_malformed_messages_total": ("malformed", "reason"),
        }
        for family in self.metrics.registry.collect():
            for sample in family.samples:
                if sample.name in families:
                    key, label = families[sample.name]
                    totals[key][sample.labels.get(label, "") if label else ""] += int(sample.value)
        return {
            "received": sum(totals["received"].values()),
            "inspected": sum(totals["inspected"].values()),
            "inspected_by_verdict": {verdict: totals["inspected"][verdict] for verdict in VERDICTS},
            "dropped": sum(totals["dropped"].values()),
            "dropped_by_reason": dict(totals["dropped"]),
            "malformed": sum(totals["malformed"].values()),
            "malformed_by_reason": dict(totals["malformed"]),
            "provider": self.active.provider,
            "model": f"{self.active.card.name}:{self.active.card.version}",
        }

    # -- model source -----------------------------------------------------------------------------
    def _initial_package_dir(self) -> Path:
        from edge_inspect.models.registry import local_package_dir, open_registry, promoted

        source = self.config.model
        if source.package is not None:
            return source.package
        assert source.registry is not None and source.name is not None
        store = open_registry(source.registry)
        promotion = promoted(store, source.name)
        if promotion is None:
            raise RuntimeError(
                f"no version of {source.name} is promoted in {source.registry}; run "
                f"`edge-inspect models --registry {source.registry} promote {source.name} VERSION`"
            )
        self._promoted_version = promotion.version
        return local_package_dir(store, source.name, promotion.version, self.config.model_cache_dir)

    def _watch_registry(self) -> None:
        """Follow promotions; a package that fails to download, its hash or its smoke test is refused, the
        old one stays."""
        from edge_inspect.models.registry import RegistryError, local_package_dir, open_registry, promoted

        config = self.config
        assert config.model.registry is not None and config.model.name is not None
        # One store (for S3: one client) for the whole watch, not one per poll.
        store = open_registry(config.model.registry)
        while not self._stop_receiving.wait(config.model.poll_s):
            try:
                promotion = promoted(store, config.model.name)
            except (OSError, ValueError, RegistryError) as exc:
                log_event(log, logging.WARNING, "registry_unreadable", error=repr(exc))
                continue
            if promotion is None or promotion.version == self._promoted_version:
                continue
            self._promoted_version = promotion.version
            try:
                package_dir = local_package_dir(
                    store, config.model.name, promotion.version, config.model_cache_dir
                )
                candidate = load_active(package_dir, config, self.plan)
            except Exception as exc:  # any failure to load keeps the serving model
                self.metrics.model_swap("rejected")
                log_event(
                    log,
                    logging.ERROR,
                    "model_swap_rejected",
                    version=promotion.version,
                    error=str(exc),
                    serving=self.active.ref.version,
                )
                continue
            previous, self.active = self.active, candidate
            self.metrics.set_model(candidate.ref, candidate.card.family, candidate.provider)
            self.metrics.model_swap("swapped")
            log_event(
                log,
                logging.WARNING,
                "model_swapped",
                previous=previous.ref.version,
                version=candidate.ref.version,
            )

    # -- receiver thread --------------------------------------------------------------------------
    def _receive_loop(self) -> None:
        from edge_inspect.inspector.receive import validate

        try:
            while not self._stop_receiving.is_set():
                parts = self.receiver.recv(timeout_ms=100)
                if parts is None:
                    continue
                try:
                    frame = validate(parts, time.time_ns())
                except ContractError as exc:
                    self._reject(exc, None)
                    continue
                camera = frame.header.camera_id
                self.metrics.frame_received(camera)
                lost = self._seq.gap(camera, frame.header.seq)
                if lost:
                    self._count_drop(camera, "seq_gap", lost)
                self.queues.put(frame, self._stop_receiving)
                self.metrics.set_queue_depth(camera, self.queues.depths().get(camera, 0))
        finally:
            self._receiver_done.set()

    def _reject(self, exc: ContractError, camera_id: str | None) -> None:
        self.metrics.malformed_message(exc.reason)
        log_event(
            log, logging.WARNING, "frame_rejected", reason=exc.reason, camera_id=camera_id, detail=str(exc)
        )

    def _count_drop(self, camera_id: str, reason: str, count: int = 1) -> None:
        self.metrics.frame_dropped(camera_id, reason, count)

    # -- worker thread ----------------------------------------------------------------------------
    def _prepare_loop(self) -> None:
        """Batch, decode and preprocess; runs while the inference thread works on the previous batch."""
        try:
            while True:
                batch = self.queues.next_batch(
                    self.config.batching.max_batch, self.config.batching.max_wait_ms / 1000
                )
                if batch:
                    try:
                        prepared = self._prepare(batch)
                    except Exception as exc:  # a failing batch must not stop the line: judge it REVIEW
                        prepared = self._failed_batch(batch, exc)
                    if prepared is not None:
                        self._prepared.put(prepared)
                elif self._receiver_done.is_set() and self.queues.total() == 0:
                    return
        finally:
            self._prepared.put(None)

    def _infer_loop(self) -> None:
        try:
            while (prepared := self._prepared.get()) is not None:
                self._outcomes.put(self._judge(prepared))
        finally:
            self._outcomes.put(None)

    def _prepare(self, batch: list) -> PreparedBatch | None:
        from edge_inspect.inspector.decode import decode
        from edge_inspect.inspector.preprocess import preprocess_batch

        # One model for the whole batch: a swap takes effect at the next batch, never inside one.
        active = self.active
        t_batch = time.time_ns()
        if self._device_path is not None:
            return self._prepare_on_device(self._device_path, batch, active, t_batch)
        frames, images, decode_ms = [], [], []
        for frame in batch:
            t0 = time.perf_counter()
            try:
                images.append(decode(frame))
            except ContractError as exc:
                self._reject(exc, frame.header.camera_id)
                continue
            frames.append(frame)
            decode_ms.append((time.perf_counter() - t0) * 1e3)
        if not frames:
            return None
        self.metrics.observe_batch(len(frames))
        t0 = time.perf_counter()
        # A fresh buffer per batch: the previous one may still be in use by the inference thread.
        inputs = preprocess_batch(images, active.card.preprocess)
        preprocess_ms = (time.perf_counter() - t0) * 1e3
        return PreparedBatch(active, frames, images, decode_ms, inputs, preprocess_ms, t_batch)

    def _failed_batch(self, batch: list, exc: Exception) -> PreparedBatch:
        log_event(log, logging.ERROR, "preprocess_failed", error=repr(exc), batch=len(batch))
        n = len(batch)
        return PreparedBatch(
            self.active, batch, [None] * n, [0.0] * n, None, 0.0, time.time_ns(), failure=repr(exc)
        )

    def _prepare_on_device(
        self, device_path: DeviceFramePath, batch: list, active: ActiveModel, t_batch: int
    ) -> PreparedBatch | None:
        ready, rejected = device_path.prepare(batch, active.card.preprocess, active.model.input_dtype)
        for exc, frame in rejected:
            self._reject(exc, frame.header.camera_id)
        if ready is None:
            return None
        self.metrics.observe_batch(len(ready.frames))
        return PreparedBatch(
            active, ready.frames, ready.images, ready.decode_ms, ready.inputs, ready.preprocess_ms, t_batch
        )

    def _infer(self, active: ActiveModel, inputs: np.ndarray | torch.Tensor) -> dict[str, Any]:
        """The model's outputs as host arrays, as far as postprocess reads them."""
        if self._device_path is None:
            return active.model.run(inputs)
        return self._device_path.infer(active.model, inputs, active.card, self.config.rules)

    def _judge(self, prepared: PreparedBatch) -> list[Outcome]:
        from edge_inspect.inspector.postprocess import Judgement, postprocess

        active, frames, images = prepared.active, prepared.frames, prepared.images
        t1 = t2 = time.perf_counter()
        stage = "preprocess"
        try:
            if prepared.failure is not None:
                raise RuntimeError(prepared.failure)
            stage = "infer"
            outputs = self._infer(active, prepared.inputs)
            t2 = time.perf_counter()
            stage = "postprocess"
            hws = [(img.shape[0], img.shape[1]) for img in images]
            judgements = postprocess(outputs, active.card, self.config.rules, hws)
        except Exception as exc:  # any stage's failure must still account for every frame
            if stage == "infer":
                t2 = time.perf_counter()
            self.metrics.stage_error(stage)
            if prepared.failure is None:
                log_event(log, logging.ERROR, f"{stage}_failed", error=repr(exc), batch=len(frames))
            error = Defect(cls=f"{stage}_error", score=1.0)
            judgements = [Judgement(float("nan"), NORMALISED_THRESHOLD, "REVIEW", [error]) for _ in frames]
        t3 = time.perf_counter()
        infer_ms, post_ms = (t2 - t1) * 1e3, (t3 - t2) * 1e3
        t_done = time.time_ns()
        outcomes = []
        for frame, image, judgement, dec_ms in zip(
            frames, images, judgements, prepared.decode_ms, strict=True
        ):
            header = frame.header
            timings = StageTimings(
                transport=max(0.0, (frame.t_received_ns - header.t_capture_ns) / 1e6),
                queue=(prepared.t_batch_ns - frame.t_received_ns) / 1e6,
                decode=dec_ms,
                preprocess=prepared.preprocess_ms,
                infer=infer_ms,
                postprocess=post_ms,
                total=(t_done - header.t_capture_ns) / 1e6,
            )
            result = InspectionResult(
                camera_id=header.camera_id,
                seq=header.seq,
                part_id=header.part_id,
                station=header.station,
                t_capture_ns=header.t_capture_ns,
                verdict=judgement.verdict,
                score=judgement.score,
                threshold=NORMALISED_THRESHOLD,
                defects=judgement.defects,
                model=active.ref,
                timings_ms=timings,
            )
            archived = image_to_archive(result, image, self.config.records.archive_ok_rate)
            outcomes.append(Outcome(result, archived, active.device))
        return outcomes

    # -- sink thread ------------------------------------------------------------------------------
    def _sink_loop(self) -> None:
        from edge_inspect.sinks.record_store import RecordStore

        store = RecordStore(self.config.db_path, self.config.image_dir)
        try:
            while (outcomes := self._outcomes.get()) is not None:
                if outcomes:
                    self._record(store, outcomes)
        finally:
            store.close()

    def _record(self, store: Any, outcomes: list[Outcome]) -> None:
        results = []
        for outcome in outcomes:
            result = outcome.result
            if outcome.archive_image is not None:
                path = store.archive_image(result, outcome.archive_image)
                result = dataclasses.replace(result, image_path=path)
            results.append(result)
        store.add_results(results, with_outbox=self.config.mes.url is not None)
        if self._deliverer is not None:
            self._deliverer.wake()
        for result, outcome in zip(results, outcomes, strict=True):
            self.metrics.observe_result(result, outcome.device)
            if self._publisher is not None:
                self._publisher.send_multipart([result.camera_id.encode(), result.to_json().encode()])


def plan_frame_path(config: InspectorConfig) -> FramePlan:
    """The frame path for this machine; raises RuntimeError when the one requested cannot run here."""
    return choose_frame_path(
        config.inference.frame_path,
        config.inference.device,
        config.inference.runtime,
        probe_device_path(config.inference.runtime),
    )


def run_until_signalled(config: InspectorConfig, seconds: float | None = None) -> dict[str, Any]:
    """Run until SIGINT/SIGTERM (or `seconds`), then stop gracefully and return the summary."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    inspector = Inspector(config)
    with inspector:
        # A line on stdout that a supervisor (the demo, a test) waits for before starting cameras.
        print(
            json.dumps(
                {
                    "event": "ready",
                    "bind": inspector.receiver.endpoint,
                    "results": inspector.results_endpoint,
                    "metrics_port": inspector.metrics_server.port if inspector.metrics_server else None,
                    "provider": inspector.active.provider,
                    "frame_path": inspector.plan.path,
                    "runtime": inspector.plan.runtime,
                    "device": inspector.active.device,
                    "why": inspector.plan.reason,
                }
            ),
            flush=True,
        )
        stop.wait(seconds)
    return inspector.summary()
