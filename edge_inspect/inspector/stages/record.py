"""Record stage: archive NG/REVIEW images (and a sample of OK) → SQLite results + MES outbox, in one
transaction → acknowledgement to the camera (through the receive stage) → Prometheus → results PUB.

A result is written before it is acknowledged, published or delivered. Counts `inspected` by verdict once
written; a result the store already held (a replayed frame that slipped past the receive stage's check) is
counted `duplicate` instead, and neither published nor delivered again.
A part whose image cannot be archived (disk full, an unencodable image) is recorded as REVIEW with the
reason, without its image; a batch the database refuses is retried, with back-off, until it is written:
meanwhile the stage reports the store unwritable (`/readyz`) and back-pressure reaches the cameras.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_inspect.bus.contracts import Defect, InspectionResult
from edge_inspect.inspector.device.frame_path import host_image
from edge_inspect.inspector.postprocess import heat_map
from edge_inspect.inspector.rules import NORMALISED_THRESHOLD
from edge_inspect.inspector.stages.base import Stage
from edge_inspect.logs import log_event
from edge_inspect.sampling import stable_fraction

if TYPE_CHECKING:
    import torch

    from edge_inspect.bus.security import ServerAuth
    from edge_inspect.inspector.alarms import AlarmEvaluator
    from edge_inspect.models.package import ModelCard
    from edge_inspect.sinks.metrics import InspectorMetrics
    from edge_inspect.sinks.record_store import RecordStore

ARCHIVED_VERDICTS = ("NG", "REVIEW")
# Back-off between attempts to write a batch the database refused (disk full, locked, I/O error).
RETRY_INITIAL_S = 0.5
RETRY_MAX_S = 10.0

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """One judged frame on its way to the sinks, with its image in host memory when it is to be archived."""

    result: InspectionResult
    archive_image: np.ndarray | None
    device: str
    # An archived part's anomaly map and the card that reads it: its heat map (postprocess.heat_map) is
    # drawn here, in the record stage, and archived beside its image.
    heat_source: tuple[np.ndarray, ModelCard] | None = None

    def heat_map(self) -> np.ndarray | None:
        if self.heat_source is None or self.archive_image is None:
            return None
        anomaly_map, card = self.heat_source
        return heat_map(anomaly_map, card, self.archive_image.shape[:2])


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


def archived(store: RecordStore, outcomes: list[Outcome]) -> tuple[list[InspectionResult], int]:
    """The outcomes' results, with the path of each image archived, and how many images could not be:
    those parts go to a person (REVIEW, `archive_failed`), since their evidence is missing."""
    results, failures = [], 0
    for outcome in outcomes:
        result = outcome.result
        if outcome.archive_image is not None:
            try:
                path = store.archive_image(result, outcome.archive_image, outcome.heat_map())
                result = dataclasses.replace(result, image_path=path)
            except (OSError, RuntimeError) as exc:
                failures += 1
                result = unarchived(result, exc)
        results.append(result)
    return results, failures


def unarchived(result: InspectionResult, exc: BaseException) -> InspectionResult:
    log_event(log, logging.ERROR, "archive_failed", result_id=result.result_id, error=repr(exc))
    reason = Defect(cls="archive_failed", score=1.0)
    score = result.score if result.verdict == "REVIEW" else NORMALISED_THRESHOLD
    return dataclasses.replace(
        result, verdict="REVIEW", score=score, defects=[*result.defects, reason], rule="archive_failed"
    )


class RecordStage(Stage):
    """Takes lists of outcomes off `inbox` until None. Binds the results PUB socket at once (so
    `endpoint` is known before start); `deliverer` (the MES webhook), when given, is woken per batch.
    `on_committed(results, inserted)` is called after each commit (the receive stage acknowledges the
    frames), `on_finished()` once the stage has recorded its last batch."""

    name = "record"

    def __init__(
        self,
        db_path: Path,
        image_dir: Path,
        results_bind: str | None,
        with_outbox: bool,
        metrics: InspectorMetrics,
        zmq_context: Any,
        auth: ServerAuth | None = None,
    ) -> None:
        import zmq

        super().__init__()
        # False while the database refuses writes; read by /readyz.
        self.store_writable = True
        self.inbox: queue.Queue[list[Outcome] | None] = queue.Queue(maxsize=8)
        self.deliverer: Any = None
        # The recipe's line alarms, evaluated on what was recorded; set by the service.
        self.alarms: AlarmEvaluator | None = None
        self.on_committed: Callable[[list[InspectionResult], set[str]], None] | None = None
        self.on_finished: Callable[[], None] | None = None
        self._paths = (db_path, image_dir)
        self._with_outbox = with_outbox
        self._metrics = metrics
        self._publisher = None
        self.endpoint = None
        if results_bind:
            self._publisher = zmq_context.socket(zmq.PUB)
            self._publisher.setsockopt(zmq.LINGER, 1000)
            if auth is not None:
                auth.apply(self._publisher)
            self._publisher.bind(results_bind)
            self.endpoint = self._publisher.getsockopt(zmq.LAST_ENDPOINT).decode()

    def run(self) -> None:
        from edge_inspect.sinks.record_store import RecordStore

        store = RecordStore(*self._paths)
        try:
            while (outcomes := self.inbox.get()) is not None:
                if outcomes:
                    with self.working():
                        self.record(store, outcomes)
        finally:
            store.close()
            if self.on_finished is not None:
                self.on_finished()

    def record(self, store: RecordStore, outcomes: list[Outcome]) -> None:
        results, archive_failures = archived(store, outcomes)
        if archive_failures:
            self._metrics.stage_error(self.name, archive_failures)
            self.tally.add("stage_errors", self.name, archive_failures)
        inserted = self.write(store, results)
        if self.on_committed is not None:
            self.on_committed(results, inserted)
        if self.deliverer is not None:
            self.deliverer.wake()
        for result, outcome in zip(results, outcomes, strict=True):
            if result.result_id not in inserted:
                self.tally.add("duplicate", "record")
                continue
            self._metrics.observe_result(result, outcome.device)
            self.tally.add("inspected", result.verdict)
            if self.alarms is not None:
                self.alarms.observe(result)
            if self._publisher is not None:
                self._publisher.send_multipart([result.camera_id.encode(), result.to_json().encode()])

    def write(self, store: RecordStore, results: list[InspectionResult]) -> set[str]:
        """Write the batch, retrying until the database takes it: nothing accepted is dropped here.
        Returns the ids newly recorded."""
        delay = RETRY_INITIAL_S
        while True:
            try:
                inserted = store.add_results(results, with_outbox=self._with_outbox)
            except (sqlite3.Error, OSError) as exc:
                self.store_writable = False
                self._metrics.stage_error(self.name)
                self.tally.add("stage_errors", self.name)
                log_event(
                    log,
                    logging.ERROR,
                    "record_write_failed",
                    error=repr(exc),
                    batch=len(results),
                    retry_s=delay,
                )
                time.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            if not self.store_writable:
                log_event(log, logging.WARNING, "record_write_recovered", batch=len(results))
            self.store_writable = True
            # A store that does not say (a wrapper returning None) is taken to have recorded them all.
            return inserted if inserted is not None else {result.result_id for result in results}

    def close(self) -> None:
        if self._publisher is not None:
            self._publisher.close()
