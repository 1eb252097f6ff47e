"""Record stage: archive NG/REVIEW images (and a sample of OK) → SQLite results + MES outbox, in one
transaction → Prometheus → results PUB.

A result is written before it is published or delivered. Counts `inspected` by verdict once written.
"""

from __future__ import annotations

import dataclasses
import queue
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_inspect.bus.contracts import InspectionResult
from edge_inspect.inspector.device.frame_path import host_image
from edge_inspect.inspector.stages.base import Stage
from edge_inspect.sampling import stable_fraction

if TYPE_CHECKING:
    import torch

    from edge_inspect.sinks.metrics import InspectorMetrics
    from edge_inspect.sinks.record_store import RecordStore

ARCHIVED_VERDICTS = ("NG", "REVIEW")


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


def archived(store: RecordStore, outcomes: list[Outcome]) -> list[InspectionResult]:
    """The outcomes' results, with the path of each image archived."""
    results = []
    for outcome in outcomes:
        result = outcome.result
        if outcome.archive_image is not None:
            path = store.archive_image(result, outcome.archive_image)
            result = dataclasses.replace(result, image_path=path)
        results.append(result)
    return results


class RecordStage(Stage):
    """Takes lists of outcomes off `inbox` until None. Binds the results PUB socket at once (so
    `endpoint` is known before start); `deliverer` (the MES webhook), when given, is woken per batch."""

    name = "record"

    def __init__(
        self,
        db_path: Path,
        image_dir: Path,
        results_bind: str | None,
        with_outbox: bool,
        metrics: InspectorMetrics,
        zmq_context: Any,
    ) -> None:
        import zmq

        super().__init__()
        self.inbox: queue.Queue[list[Outcome] | None] = queue.Queue(maxsize=8)
        self.deliverer: Any = None
        self._paths = (db_path, image_dir)
        self._with_outbox = with_outbox
        self._metrics = metrics
        self._publisher = None
        self.endpoint = None
        if results_bind:
            self._publisher = zmq_context.socket(zmq.PUB)
            self._publisher.setsockopt(zmq.LINGER, 1000)
            self._publisher.bind(results_bind)
            self.endpoint = self._publisher.getsockopt(zmq.LAST_ENDPOINT).decode()

    def run(self) -> None:
        from edge_inspect.sinks.record_store import RecordStore

        store = RecordStore(*self._paths)
        try:
            while (outcomes := self.inbox.get()) is not None:
                if outcomes:
                    self.record(store, outcomes)
        finally:
            store.close()

    def record(self, store: RecordStore, outcomes: list[Outcome]) -> None:
        results = archived(store, outcomes)
        store.add_results(results, with_outbox=self._with_outbox)
        if self.deliverer is not None:
            self.deliverer.wake()
        for result, outcome in zip(results, outcomes, strict=True):
            self._metrics.observe_result(result, outcome.device)
            self.tally.add("inspected", result.verdict)
            if self._publisher is not None:
                self._publisher.send_multipart([result.camera_id.encode(), result.to_json().encode()])

    def close(self) -> None:
        if self._publisher is not None:
            self._publisher.close()
