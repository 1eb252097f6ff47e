"""The inspector service (`edge-inspect serve`): its stages assembled, started, supervised and stopped.

    receive stage   bus → receive.validate → per-camera queues (back-pressure / supersede)   stages/receive.py
    prepare stage   queues → dynamic batch → decode → preprocess (overlaps the previous batch's inference)
                                                                                             stages/prepare.py
    infer stage     infer → postprocess → rules                                              stages/infer.py
    record stage    archive NG/REVIEW images → SQLite results + MES outbox (one transaction) → PUB
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
from typing import Any

from edge_inspect.bus.contracts import VERDICTS
from edge_inspect.inspector.batching import InferenceSlot
from edge_inspect.inspector.config import InspectorConfig
from edge_inspect.inspector.device.frame_path import (
    DeviceFramePath,
    FramePlan,
    choose_frame_path,
    probe_device_path,
)
from edge_inspect.inspector.model_source import ActiveModel, ModelSource
from edge_inspect.inspector.stages.base import Stage, merge_tallies
from edge_inspect.inspector.stages.infer import InferStage
from edge_inspect.inspector.stages.prepare import PreparedBatch, PrepareStage
from edge_inspect.inspector.stages.receive import ReceiveStage
from edge_inspect.inspector.stages.record import RecordStage
from edge_inspect.logs import log_event

log = logging.getLogger(__name__)


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
        # Every model a swap brings is loaded for the same plan, so onto this same device.
        device_path = DeviceFramePath(self.active.model.device) if self.plan.path == "device" else None
        self.metrics_server = (
            self.metrics.serve(config.metrics.port, config.metrics.address)
            if config.metrics.port is not None
            else None
        )
        self._zmq = zmq.Context()
        self._stop = threading.Event()
        self.receive = ReceiveStage(
            config.bus.bind, config.batching.queue_depth, self.metrics, self._zmq, self._stop
        )
        self.receiver = self.receive.receiver
        self.record = RecordStage(
            config.db_path,
            config.image_dir,
            config.bus.results,
            config.mes.url is not None,
            self.metrics,
            self._zmq,
        )
        self.results_endpoint = self.record.endpoint
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
        self._deliverer: Any = None

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
        if self.config.mes.url:
            # Started before the record stage, so the very first results already get outbox rows.
            self._deliverer = self._start_deliverer(self.config.mes.url)
            self.record.deliverer = self._deliverer
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

    def _start_deliverer(self, url: str) -> Any:
        from edge_inspect.sinks.mes_webhook import WebhookConfig, WebhookDeliverer

        mes = self.config.mes
        deliverer = WebhookDeliverer(
            self.config.db_path,
            WebhookConfig(
                url=url, initial_backoff_s=min(1.0, mes.max_backoff_s), max_backoff_s=mes.max_backoff_s
            ),
            metrics=self.metrics,
        )
        deliverer.start()
        return deliverer

    def stop(self) -> None:
        """Stop receiving, judge and record everything already accepted, then release every resource."""
        self._stop.set()
        self.models.stop()
        for stage in self.stages:
            stage.join()
        for stage in self.stages:
            if stage.failure is not None:
                log_event(log, logging.ERROR, "stage_failed_during_run", stage=stage.name)
        if self._deliverer is not None:
            self._deliverer.stop()
        self.receive.close()
        self.record.close()
        self._zmq.term()
        if self.metrics_server is not None:
            self.metrics_server.close()

    def __enter__(self) -> Inspector:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def healthy(self) -> bool:
        """Every stage thread is running (after `start`, before `stop`)."""
        return all(stage.alive() for stage in self.stages)

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
        stop.wait(seconds)
    return inspector.summary()
