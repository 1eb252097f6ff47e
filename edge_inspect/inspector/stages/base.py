"""What every stage shares: a thread of its own (`Stage`), its own counts (`Tally`) and the one way a frame
that breaks the contract is refused (`reject`)."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING

from edge_inspect.bus.contracts import ContractError
from edge_inspect.logs import log_event

if TYPE_CHECKING:
    from edge_inspect.sinks.metrics import InspectorMetrics

log = logging.getLogger(__name__)


class Tally:
    """A stage's own counts by kind ("received", "dropped", ...) and key (a reason, a verdict): plain ints
    under a lock. The inspector's summary is made from these, not read back out of Prometheus."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, Counter[str]] = {}

    def add(self, kind: str, key: str = "", count: int = 1) -> None:
        with self._lock:
            self._counts.setdefault(kind, Counter())[key] += count

    def snapshot(self) -> dict[str, Counter[str]]:
        with self._lock:
            return {kind: Counter(counts) for kind, counts in self._counts.items()}


def merge_tallies(tallies: Iterable[Tally]) -> dict[str, Counter[str]]:
    """The counts of several stages added up, kind by kind."""
    merged: dict[str, Counter[str]] = {}
    for tally in tallies:
        for kind, counts in tally.snapshot().items():
            merged.setdefault(kind, Counter()).update(counts)
    return merged


def reject(metrics: InspectorMetrics, tally: Tally, exc: ContractError, camera_id: str | None) -> None:
    """Count and log a frame refused for breaking the frame contract (it gets no result)."""
    metrics.malformed_message(exc.reason)
    tally.add("malformed", exc.reason)
    log_event(log, logging.WARNING, "frame_rejected", reason=exc.reason, camera_id=camera_id, detail=str(exc))


class Stage:
    """One stage's thread: `run()` is its loop. A loop that raises is logged and recorded in `failure`; each
    stage passes end-of-stream on in a `finally`, so the stages after it still drain and stop."""

    name = "stage"

    def __init__(self) -> None:
        self.tally = Tally()
        self.failure: BaseException | None = None
        self._thread: threading.Thread | None = None

    def run(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        """Start the thread; a stage already started is left running (a test may start one ahead)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._main, name=f"edge-inspect-{self.name}", daemon=True)
        self._thread.start()

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _main(self) -> None:
        try:
            self.run()
        except BaseException as exc:
            self.failure = exc
            log_event(log, logging.CRITICAL, "stage_crashed", stage=self.name, error=repr(exc))
            raise
