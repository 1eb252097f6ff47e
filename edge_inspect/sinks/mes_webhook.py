"""At-least-once delivery of inspection results to the MES, from the record store's durable outbox.

A result is queued in the same transaction that records it (`RecordStore.add_results(..., with_outbox=
True)`), so a crash can never lose a delivery; it can only repeat one (POSTed, then killed before it
was marked delivered). Every POST therefore carries `Idempotency-Key: <result_id>` and the MES must
ignore a key it has already seen. HTTP header values are Latin-1, camera ids may be any script: the key
is the result id percent-encoded as UTF-8 (`idempotency_key`), which leaves ASCII ids as they are.

`deliver_once` is the whole policy and runs synchronously; `WebhookDeliverer` only calls it in a loop
from its own thread.
"""

from __future__ import annotations

import http.client
import logging
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import quote, urlsplit

from edge_inspect.logs import log_event
from edge_inspect.sinks.record_store import RecordStore

if TYPE_CHECKING:
    # Only for annotations: the deliverer works without prometheus_client installed.
    from edge_inspect.sinks.metrics import InspectorMetrics

logger = logging.getLogger(__name__)

Outcome = Literal["delivered", "retry", "dead"]
# Besides 5xx, the statuses that mean "not now" rather than "never": request timeout, too early,
# too many requests.
RETRYABLE_STATUSES = frozenset({408, 425, 429})
# Enough of an error response to see the MES's reason in the log and the outbox, not a whole page.
_DETAIL_CHARS = 300


@dataclass(frozen=True)
class WebhookConfig:
    url: str
    timeout_s: float = 5.0
    initial_backoff_s: float = 1.0
    max_backoff_s: float = 300.0
    batch: int = 32

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"MES webhook url {self.url!r} must be an absolute http:// or https:// URL")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {self.timeout_s}")
        if not 0 < self.initial_backoff_s <= self.max_backoff_s:
            raise ValueError(
                f"need 0 < initial_backoff_s <= max_backoff_s, got {self.initial_backoff_s} and "
                f"{self.max_backoff_s}"
            )
        if self.batch < 1:
            raise ValueError(f"batch must be at least 1, got {self.batch}")


@dataclass(frozen=True)
class HttpReply:
    """What the receiver answered: the status and, for errors, the start of the body."""

    status: int
    detail: str = ""


# (url, body, headers, timeout_s) -> reply; raises OSError or http.client.HTTPException when no
# answer came (refused, reset, timed out).
Post = Callable[[str, bytes, Mapping[str, str], float], HttpReply]


@dataclass(frozen=True)
class DeliveryReport:
    """What one `deliver_once` pass did. `halted`: it stopped early because the receiver is down or
    asked to slow down, so the caller should back off before the next pass."""

    delivered: int = 0
    retried: int = 0
    dead: int = 0
    halted: bool = False

    @property
    def attempted(self) -> int:
        return self.delivered + self.retried + self.dead


def classify_status(status: int) -> Outcome:
    if 200 <= status < 300:
        return "delivered"
    if status >= 500 or status in RETRYABLE_STATUSES:
        return "retry"
    # Other 4xx, and 3xx (redirects are not followed, see post_json): sending the same request again
    # cannot succeed until someone fixes the configuration or the payload.
    return "dead"


def next_backoff(attempts: int, initial: float, maximum: float, rng: random.Random) -> float:
    """Seconds to wait after the `attempts`-th failed attempt: doubling from `initial`, capped at
    `maximum`, with the upper half jittered so that many inspectors restarted together do not retry
    in lock-step, while never retrying sooner than half the nominal delay."""
    if attempts < 1:
        raise ValueError(f"attempts counts failures so far and must be at least 1, got {attempts}")
    # The exponent cap only keeps the float finite; the delay reached `maximum` long before.
    ceiling = min(maximum, initial * 2.0 ** min(attempts - 1, 60))
    return ceiling / 2 + rng.uniform(0.0, ceiling / 2)


class _RefuseRedirect(urllib.request.HTTPRedirectHandler):
    # urllib would follow a 301/302/303 as a GET without the body, and the GET's 200 would then mark a
    # result delivered that the MES never received; returning None surfaces the 3xx as an HTTPError.
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def post_json(url: str, body: bytes, headers: Mapping[str, str], timeout_s: float) -> HttpReply:
    """POST with urllib; any HTTP status is returned, only a missing answer raises."""
    request = urllib.request.Request(url, data=body, headers=dict(headers), method="POST")
    opener = urllib.request.build_opener(_RefuseRedirect)
    try:
        with opener.open(request, timeout=timeout_s) as response:
            return HttpReply(response.status)
    except urllib.error.HTTPError as exc:
        with exc:
            detail = exc.read(_DETAIL_CHARS).decode("utf-8", errors="replace") if exc.fp else ""
        return HttpReply(exc.code, detail or str(exc.reason))


def idempotency_key(result_id: str) -> str:
    """The result id as an HTTP header value: UTF-8 percent-encoded, printable ASCII ids unchanged."""
    return quote(result_id, safe="".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "%"))


def deliver_once(
    store: RecordStore,
    config: WebhookConfig,
    now_ns: int,
    post: Post = post_json,
    rng: random.Random | None = None,
    cancel: threading.Event | None = None,
) -> DeliveryReport:
    """POST up to `config.batch` due deliveries, oldest first, and record each outcome in the outbox.

    2xx: delivered. No answer, 408, 425, 429 or 5xx: retried later with back-off, and the pass stops
    there (the receiver is unwell; the rest would fail the same way). Any other status: dead, kept in
    the outbox for `edge-inspect records --requeue-dead`. `cancel` is checked between POSTs so that a
    shutdown waits for at most one request.
    """
    rng = rng or random.Random()
    delivered = dead = 0
    for item in store.due_deliveries(now_ns, config.batch):
        if cancel is not None and cancel.is_set():
            break
        headers = {"Content-Type": "application/json", "Idempotency-Key": idempotency_key(item.result_id)}
        try:
            reply = post(config.url, item.payload.encode("utf-8"), headers, config.timeout_s)
        except (OSError, http.client.HTTPException) as exc:
            outcome: Outcome = "retry"
            error = f"no answer from {config.url}: {_describe(exc)}"
        else:
            outcome = classify_status(reply.status)
            error = f"HTTP {reply.status} from {config.url}" + (f": {reply.detail}" if reply.detail else "")
        attempts = item.attempts + 1
        if outcome == "delivered":
            store.mark_delivered([item.id], now_ns)
            delivered += 1
        elif outcome == "retry":
            delay_s = next_backoff(attempts, config.initial_backoff_s, config.max_backoff_s, rng)
            store.mark_retry(item.id, error, now_ns + int(delay_s * 1e9))
            log_event(
                logger,
                logging.WARNING,
                "mes_delivery_retry",
                result_id=item.result_id,
                attempts=attempts,
                retry_in_s=round(delay_s, 3),
                error=error,
            )
            return DeliveryReport(delivered=delivered, retried=1, dead=dead, halted=True)
        else:
            store.mark_dead(item.id, error)
            log_event(
                logger,
                logging.ERROR,
                "mes_delivery_dead",
                result_id=item.result_id,
                attempts=attempts,
                error=error,
                replay=f"fix the cause, then: edge-inspect records --db {store.db_path} "
                f"--requeue-dead {item.result_id}",
            )
            dead += 1
    return DeliveryReport(delivered=delivered, dead=dead)


def _describe(exc: BaseException) -> str:
    # URLError wraps the socket error; its reason reads better than "<urlopen error ...>".
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    return f"{type(reason).__name__}: {reason}" if isinstance(reason, BaseException) else str(reason)


class WebhookDeliverer:
    """Delivers the outbox of the record store at `db_path` from a thread of its own.

    The thread opens its own RecordStore (connections are per thread). It loops until `stop()`:
    immediately again while full batches are due, waits for the next due delivery (at most
    `idle_poll_s`) otherwise, backs off while the receiver is down, and logs any exception and goes
    on. Call `wake()` after queueing results to deliver them without waiting for the next poll.
    """

    def __init__(
        self,
        db_path: Path,
        config: WebhookConfig,
        metrics: InspectorMetrics | None = None,
        post: Post = post_json,
        idle_poll_s: float = 1.0,
        rng: random.Random | None = None,
    ) -> None:
        self._db_path = Path(db_path)
        self._config = config
        self._metrics = metrics
        self._post = post
        self._idle_poll_s = idle_poll_s
        self._rng = rng or random.Random()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("this WebhookDeliverer was already started; create a new one to restart")
        self._thread = threading.Thread(target=self._run, name="mes-webhook", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout_s: float | None = None) -> None:
        """Ask the thread to finish after its current POST and wait for it."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        store: RecordStore | None = None
        failures = 0
        try:
            while not self._stop.is_set():
                # Cleared before the pass: a wake() arriving during it makes the wait below return at once.
                self._wake.clear()
                try:
                    if store is None:
                        store = RecordStore(self._db_path)
                    report = deliver_once(
                        store, self._config, time.time_ns(), self._post, self._rng, cancel=self._stop
                    )
                    self._publish(report, store)
                    failures = failures + 1 if report.halted else 0
                    delay_s = self._delay_after(report, store, failures)
                except Exception as exc:
                    failures += 1
                    log_event(
                        logger,
                        logging.ERROR,
                        "mes_deliverer_error",
                        db=str(self._db_path),
                        error=f"{type(exc).__name__}: {exc}",
                        consecutive_failures=failures,
                    )
                    # A fresh connection next time, in case this one is what broke.
                    if store is not None:
                        store.close()
                        store = None
                    delay_s = self._backoff(failures)
                self._wake.wait(delay_s)
        finally:
            if store is not None:
                store.close()

    def _publish(self, report: DeliveryReport, store: RecordStore) -> None:
        if self._metrics is not None:
            self._metrics.observe_deliveries(report.delivered, report.retried, report.dead)
            self._metrics.set_outbox_pending(store.count_pending())

    def _delay_after(self, report: DeliveryReport, store: RecordStore, failures: int) -> float:
        if report.halted:
            return self._backoff(failures)
        if report.attempted >= self._config.batch:
            return 0.0
        next_due_ns = store.next_due_ns()
        if next_due_ns is None:
            return self._idle_poll_s
        return min(self._idle_poll_s, max(0.0, (next_due_ns - time.time_ns()) / 1e9))

    def _backoff(self, failures: int) -> float:
        return next_backoff(failures, self._config.initial_backoff_s, self._config.max_backoff_s, self._rng)
