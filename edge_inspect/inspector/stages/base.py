"""What every stage shares: a thread of its own (`Stage`), its own counts (`Tally`) and the one way a frame
that breaks the contract is refused (`reject`)."""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
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


class RejectionLog:
    """Logs refused frames without letting a flood of them flood the log: the first few of each reason in
    full, then one line per reason every `interval_s` saying how many were not logged. Every refusal is
    counted in the metrics regardless."""

    def __init__(self, burst: int = 5, interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self._burst, self._interval_s, self._clock = burst, interval_s, clock
        self._logged: Counter[str] = Counter()
        self._quiet: Counter[str] = Counter()
        self._last: dict[str, float] = {}

    def should_log(self, reason: str) -> tuple[bool, int]:
        """Whether to log this refusal, and how many of its reason went unlogged since the last line."""
        now = self._clock()
        if self._logged[reason] < self._burst or now - self._last.get(reason, -1e18) >= self._interval_s:
            self._logged[reason] += 1
            self._last[reason] = now
            suppressed, self._quiet[reason] = self._quiet[reason], 0
            return True, suppressed
        self._quiet[reason] += 1
        return False, 0


def reject(
    metrics: InspectorMetrics,
    tally: Tally,
    log_limit: RejectionLog,
    exc: ContractError,
    camera_id: str | None,
) -> None:
    """Count and log a frame refused for breaking the frame contract (it gets no result)."""
    metrics.malformed_message(exc.reason)
    tally.add("malformed", exc.reason)
    logged, suppressed = log_limit.should_log(exc.reason)
    if logged:
        log_event(
            log,
            logging.WARNING,
            "frame_rejected",
            reason=exc.reason,
            camera_id=camera_id,
            detail=str(exc),
            **({"not_logged_since_last": suppressed} if suppressed else {}),
        )


class Stage:
    """One stage's thread: `run()` is its loop. Each item a loop works on is wrapped in `working()`, so a
    stage stuck on one item shows as stalled (`/healthz`); each stage handles its own items' failures (a
    REVIEW result or a counted rejection) and goes on. A loop that raises anyway is logged and recorded in
    `failure`, and the inspector then exits for its supervisor to restart it. Each stage passes
    end-of-stream on in a `finally`, so the stages after it still drain and stop."""

    name = "stage"

    def __init__(self) -> None:
        self.tally = Tally()
        self.failure: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._busy_since: float | None = None
        self.rejections = RejectionLog()

    @contextmanager
    def working(self) -> Iterator[None]:
        self._busy_since = time.monotonic()
        try:
            yield
        finally:
            self._busy_since = None

    def stalled_s(self) -> float:
        """How long the item in hand has taken so far; 0 while waiting for input."""
        since = self._busy_since
        return 0.0 if since is None else time.monotonic() - since

    def run(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        """Start the thread; a stage already started is left running (a test may start one ahead)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._main, name=f"edge-inspect-{self.name}", daemon=True)
        self._thread.start()

    def join(self, timeout_s: float | None = None) -> bool:
        """Wait for the loop to end; False when it is still running after `timeout_s`."""
        if self._thread is not None:
            self._thread.join(timeout_s)
            return not self._thread.is_alive()
        return True

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _main(self) -> None:
        try:
            self.run()
        except BaseException as exc:  # recorded, not re-raised: the inspector's watch turns it into an exit
            self.failure = exc
            log_event(
                log,
                logging.CRITICAL,
                "stage_crashed",
                stage=self.name,
                error=repr(exc),
                traceback="".join(traceback.format_exception(exc)).strip(),
            )
