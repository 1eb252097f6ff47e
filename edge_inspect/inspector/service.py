"""The inspector service (`edge-inspect serve`): its stages assembled, started, supervised and stopped.

    receive stage   bus → receive.validate → duplicates / per-camera queues (credit / supersede),
                    acks of committed frames back to the cameras                          stages/receive.py
    prepare stage   queues → dynamic batch → decode → preprocess (overlaps the previous batch's inference)
                                                                                             stages/prepare.py
    infer stage     infer → postprocess → rules                                              stages/infer.py
    record stage    archive NG/REVIEW images → SQLite results + MES outbox (one transaction) → ack → PUB
                                                                                             stages/record.py
    model source    load, verify, smoke-test; follow registry promotions                     model_source.py
    deliverer       MES outbox → webhook (at least once, survives restarts)          sinks/mes_webhook.py
    metrics server  Prometheus /metrics                                                  sinks/metrics.py

Each stage is one thread with a bounded queue in and out: per-camera queues, a one-batch slot (so the next
batch is preprocessed while the current one is inferred, and the batcher knows whether inference is busy),
and a queue of eight judged batches. Every frame that passes validation ends as exactly one result (a
failure in preprocess, infer or postprocess becomes a REVIEW result that names the stage) and is written
before it is published or delivered. A graceful stop drains everything already accepted, stage by stage.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from typing import TYPE_CHECKING, Any

from edge_inspect.bus.contracts import VERDICTS
from edge_inspect.inspector.batching import InferenceSlot
from edge_inspect.inspector.camera_health import CameraBook, CameraCollector
from edge_inspect.inspector.config import InspectorConfig
from edge_inspect.inspector.device.frame_path import (
    DeviceFramePath,
    FramePlan,
    choose_frame_path,
    probe_device_path,
)
from edge_inspect.inspector.housekeeping import Housekeeping
from edge_inspect.inspector.model_source import ActiveModel, ModelSource
from edge_inspect.inspector.outputs import Output, start_outputs, stop_outputs
from edge_inspect.inspector.probes import readiness, stage_health
from edge_inspect.inspector.shift_reporter import ShiftReporter
from edge_inspect.inspector.stages.base import Stage, merge_tallies
from edge_inspect.inspector.stages.infer import InferStage
from edge_inspect.inspector.stages.prepare import PreparedBatch, PrepareStage
from edge_inspect.inspector.stages.receive import ReceiveStage
from edge_inspect.inspector.stages.record import RecordStage
from edge_inspect.logs import log_event
from edge_inspect.sinks.record_store import RecordStore

if TYPE_CHECKING:
    from edge_inspect.bus.security import ServerAuth

log = logging.getLogger(__name__)

# How long a stop waits for the stages to drain what they accepted before it gives up on them.
STOP_TIMEOUT_S = 30.0
# How often `run_until_signalled` looks for a crashed stage.
WATCH_INTERVAL_S = 0.5


class StageCrashed(RuntimeError):
    """A stage's loop ended with an exception: the inspector exits for its supervisor to restart it."""


def plan_frame_path(config: InspectorConfig) -> FramePlan:
    """The frame path for this machine; raises RuntimeError when the one requested cannot run here."""
    return choose_frame_path(
        config.inference.frame_path,
        config.inference.device,
        config.inference.runtime,
        probe_device_path(config.inference.runtime),
    )


def summarise(counts: dict[str, Any], active: ActiveModel) -> dict[str, Any]:
    """The summary from the stages' merged counts (`stages.base.merge_tallies`)."""

    def by_key(kind: str) -> dict[str, int]:
        return dict(counts.get(kind, {}))

    inspected = by_key("inspected")
    # Replayed frames recognised (lossless cameras resending after a reconnect); listed only when some were.
    duplicates = {"duplicate": sum(by_key("duplicate").values())} if counts.get("duplicate") else {}
    return {
        "received": sum(by_key("received").values()),
        "inspected": sum(inspected.values()),
        "inspected_by_verdict": {verdict: inspected.get(verdict, 0) for verdict in VERDICTS},
        "dropped": sum(by_key("dropped").values()),
        "dropped_by_reason": by_key("dropped"),
        "malformed": sum(by_key("malformed").values()),
        "malformed_by_reason": by_key("malformed"),
        "provider": active.provider,
        "model": f"{active.card.name}:{active.card.version}",
        **duplicates,
    }


class Inspector:
    """Owns every resource of a running inspector; `start()` then `stop()` (or use as a context manager).

    `active` is the model being served (`ModelSource.active`); assigning it replaces the model from the
    next batch on, as a promotion does.
    """

    def __init__(self, config: InspectorConfig) -> None:
        import zmq

        from edge_inspect.sinks.metrics import InspectorMetrics

        self.config = config
        config.records.workdir.mkdir(parents=True, exist_ok=True)
        self.metrics = InspectorMetrics()
        self.plan = plan_frame_path(config)
        self.models = ModelSource(config, self.plan, self.metrics)
        # Created (schema, WAL) here, once, before the stages, the deliverer and the outputs each open it.
        with RecordStore(config.db_path) as store:
            # Cameras seen before a restart stay known, so one that never came back is reported silent.
            self.cameras = CameraBook(store.camera_health())
        self.metrics.registry.register(CameraCollector(self.cameras, config.silent_after_s(), time.time_ns))
        # Every model a swap brings is loaded for the same plan, so onto this same device.
        device_path = DeviceFramePath(self.active.model.device) if self.plan.path == "device" else None
        self._zmq = zmq.Context()
        self.auth = self._bus_auth()
        self._stop = threading.Event()
        self.receive = ReceiveStage(
            config.bus,
            config.batching.queue_depth,
            self.metrics,
            self._zmq,
            self._stop,
            self.auth,
            config.db_path,
            config.batching.max_queued_bytes,
            self.cameras,
        )
        self.receiver = self.receive.receiver
        self.record = RecordStage(
            config.db_path,
            config.image_dir,
            config.bus.results,
            config.mes.url is not None,
            self.metrics,
            self._zmq,
            self.auth,
        )
        self.results_endpoint = self.record.endpoint
        # A frame is acknowledged to its camera only once its result is committed.
        self.record.on_committed = self.receive.acks.committed
        self.record.on_finished = self.receive.acks.record_finished
        slot: InferenceSlot[PreparedBatch] = InferenceSlot(on_idle=self.receive.queues.wake)
        self.prepare = PrepareStage(
            config.batching,
            self.receive.queues,
            self.receive.done,
            lambda: self.models.active,
            device_path,
            slot,
            self.metrics,
        )
        self.infer = InferStage(
            slot, self.record, config.rules, config.records.archive_ok_rate, device_path, self.metrics
        )
        self.record.alarms = self.infer.alarms
        self._deliverer: Any = None
        self._housekeeping = Housekeeping(config, self._stop, self.cameras)
        self._shift_reporter = ShiftReporter(config) if config.shifts.calendar else None
        self._outputs: list[Output] = []
        self.metrics_server = (
            self.metrics.serve(
                config.metrics.port,
                config.metrics.address,
                {"/healthz": self.health_checks, "/readyz": self.readiness_checks},
            )
            if config.metrics.port is not None
            else None
        )

    def _bus_auth(self) -> ServerAuth | None:
        bus = self.config.bus
        if not bus.authenticated:
            return None
        from edge_inspect.bus.security import ServerAuth

        assert bus.curve_secret_key is not None and bus.allowed_keys_dir is not None
        return ServerAuth(bus.curve_secret_key, bus.allowed_keys_dir, self._zmq)

    @property
    def active(self) -> ActiveModel:
        return self.models.active

    @active.setter
    def active(self, model: ActiveModel) -> None:
        self.models.active = model

    @property
    def stages(self) -> tuple[Stage, ...]:
        """In the data's order: each drains what the one before it handed on before it stops."""
        return (self.receive, self.prepare, self.infer, self.record)

    # -- lifetime ---------------------------------------------------------------------------------
    def start(self) -> None:
        # First: a plant output that cannot start (an OPC UA port taken) fails start with nothing running.
        self._outputs = start_outputs(self.config, self.metrics)
        if self.config.mes.url:
            # Started before the record stage, so the very first results already get outbox rows.
            self._deliverer = self._start_deliverer()
            self.record.deliverer = self._deliverer
        self._housekeeping.start()
        if self._shift_reporter is not None:
            self._shift_reporter.start()
        self.models.start()
        for stage in reversed(self.stages):
            stage.start()
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

    def _start_deliverer(self) -> Any:
        from edge_inspect.sinks.mes_webhook import WebhookDeliverer

        deliverer = WebhookDeliverer(self.config.db_path, self.config.mes, metrics=self.metrics)
        deliverer.start()
        return deliverer

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> bool:
        """Stop receiving, judge and record everything already accepted, then release every resource.
        Bounded: a stage still busy after `timeout_s` (a hung device, a database that never comes back) is
        left behind and reported, and False is returned; its thread dies with the process."""
        self._stop.set()
        self.models.stop()
        deadline = time.monotonic() + timeout_s
        stuck = [stage.name for stage in self.stages if not stage.join(max(0.0, deadline - time.monotonic()))]
        for stage in self.stages:
            if stage.failure is not None:
                log_event(log, logging.ERROR, "stage_failed_during_run", stage=stage.name)
        if stuck:
            log_event(log, logging.CRITICAL, "stop_timed_out", stages=stuck, timeout_s=timeout_s)
        self._housekeeping.join(max(0.0, deadline - time.monotonic()))
        if self._shift_reporter is not None:
            self._shift_reporter.stop(max(0.5, min(5.0, deadline - time.monotonic())))
        # After the stages drained, so that the outputs get the last results too.
        stop_outputs(self._outputs, max(0.5, min(5.0, deadline - time.monotonic())))
        if self._deliverer is not None:
            self._deliverer.stop()
        if self.metrics_server is not None:
            self.metrics_server.close()
        if stuck:
            return False  # sockets in use by a stuck stage must not be closed under it
        self.receive.close()
        self.record.close()
        if self.auth is not None:
            self.auth.stop()
        self._zmq.term()
        return True

    def __enter__(self) -> Inspector:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def health_checks(self) -> dict[str, str]:
        return stage_health(self.stages, self.config.metrics.stall_s)

    def readiness_checks(self) -> dict[str, str]:
        return readiness(
            self.config, self.receiver.endpoint, self.record.store_writable, self.health_checks()
        )

    def healthy(self) -> bool:
        """Every stage thread is running and none is stuck (after `start`, before `stop`)."""
        return all(state == "ok" for state in self.health_checks().values())

    def crashed(self) -> list[str]:
        """Stages whose loop ended with an exception: the inspector cannot go on."""
        return [stage.name for stage in self.stages if stage.failure is not None]

    def summary(self) -> dict[str, Any]:
        """Totals since start, from the stages' own counts."""
        return summarise(merge_tallies(stage.tally for stage in self.stages), self.active)


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
        deadline = None if seconds is None else time.monotonic() + seconds
        while not stop.wait(_next_watch_s(deadline)):
            if deadline is not None and time.monotonic() >= deadline:
                break
            if crashed := inspector.crashed():
                # Half alive is worse than dead: exit so the supervisor (systemd, Kubernetes) restarts us.
                log_event(log, logging.CRITICAL, "inspector_exiting", crashed_stages=crashed)
                raise StageCrashed(f"stage(s) {', '.join(crashed)} crashed; see the stage_crashed log line")
    return inspector.summary()


def _next_watch_s(deadline: float | None) -> float:
    return (
        WATCH_INTERVAL_S if deadline is None else min(WATCH_INTERVAL_S, max(0.0, deadline - time.monotonic()))
    )
