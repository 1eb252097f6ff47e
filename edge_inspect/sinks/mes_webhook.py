"""At-least-once delivery of inspection results to the MES, from the record store's durable outbox.

A result is queued in the same transaction that records it (`RecordStore.add_results(..., with_outbox=
True)`), so a crash can never lose a delivery; it can only repeat one (POSTed, then killed before it
was marked delivered). Every POST therefore carries `Idempotency-Key: <result_id>` and the MES must
ignore a key it has already seen. HTTP header values are Latin-1, camera ids may be any script: the key
is the result id percent-encoded as UTF-8 (`idempotency_key`), which leaves ASCII ids as they are.

Nothing wedges the outbox. A row is POSTed at most `max_attempts` times (back-off doubling from
`initial_backoff_s` to `max_backoff_s` in between), then it becomes a dead letter with its last error.
A failure that is the receiver's health (no answer, TLS refused, 5xx, 408/425/429) ends the pass, to
back off instead of hammering it; one that belongs to a row (a 3xx/4xx answer, a request that cannot be
built or encoded) kills that row only and the pass goes on. Rows go oldest first, by when each is due,
so a row in back-off lets every row behind it through.

The settings are `[mes]` of the inspector config (`MesConfig`); `WebhookConfig.from_mes` resolves them:
secrets read from their files or the environment, the TLS context built. The connection is one
`httpx.Client` per deliverer: kept alive between POSTs, connect and read timeouts, redirects never
followed (a 3xx is not a delivery), TLS verified against the system's trust store and certifi's, or only
against `ca_file`; `client_cert` (+ `client_key`) for mutual TLS.

Optional headers:

    Authorization: Bearer <token>             the token from mes.token_file or $<mes.token_env>
    X-EdgeInspect-Timestamp: <unix seconds>   with mes.hmac_key_file, and:
    X-EdgeInspect-Signature: sha256=<hex>     HMAC-SHA256(key, "<timestamp>\\n<Idempotency-Key>\\n" + body)

The signature covers the timestamp and the key, so a captured request can neither be replayed later
(reject timestamps more than a few minutes off) nor under another key. The key is the bytes of
`hmac_key_file`, whitespace at both ends stripped. A receiver checks it like this:

    expected = hmac.new(key, f"{ts}\\n{idem_key}\\n".encode() + body, "sha256").hexdigest()
    ok = hmac.compare_digest(f"sha256={expected}", signature) and abs(time.time() - int(ts)) < 300

`deliver_once` is the whole policy and runs synchronously; `WebhookDeliverer` only calls it in a loop
from its own thread.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import http.client
import logging
import os
import random
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote, urlsplit

import httpx

from edge_inspect.inspector.config import MesConfig
from edge_inspect.logs import log_event
from edge_inspect.sinks.record_store import OutboxItem, RecordStore

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
# A response body longer than this is not read to its end; the connection is dropped instead.
_DRAIN_BYTES = 64 * 1024
TIMESTAMP_HEADER = "X-EdgeInspect-Timestamp"
SIGNATURE_HEADER = "X-EdgeInspect-Signature"
USER_AGENT = "edge-inspect-mes-webhook"

# The tunables and their defaults live in MesConfig only; WebhookConfig takes them from there.
_TUNABLES = (
    "connect_timeout_s",
    "read_timeout_s",
    "initial_backoff_s",
    "max_backoff_s",
    "max_attempts",
    "batch",
    "ca_file",
    "client_cert",
    "client_key",
)


def _mes_default(name: str) -> Any:
    return MesConfig.model_fields[name].default


class NoAnswer(OSError):
    """The receiver gave no HTTP answer: refused, reset, timed out, TLS handshake refused."""


class BadRequest(ValueError):
    """This row's request cannot be sent as it is; the row goes dead, the others are unaffected."""


@dataclass(frozen=True)
class WebhookConfig:
    """The deliverer's settings: `MesConfig` with the url required and the secrets read.

    Build it with `from_mes`; constructing it directly (tests, benchmarks) takes MesConfig's defaults
    and validation rules, and the secrets as values.
    """

    url: str
    connect_timeout_s: float = _mes_default("connect_timeout_s")
    read_timeout_s: float = _mes_default("read_timeout_s")
    initial_backoff_s: float = _mes_default("initial_backoff_s")
    max_backoff_s: float = _mes_default("max_backoff_s")
    max_attempts: int = _mes_default("max_attempts")
    batch: int = _mes_default("batch")
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    token: str | None = dataclasses.field(default=None, repr=False)
    hmac_key: bytes | None = dataclasses.field(default=None, repr=False)

    def __post_init__(self) -> None:
        # MesConfig's rules, so that the two can never disagree (raises pydantic's ValidationError, a
        # ValueError).
        MesConfig(url=self.url, **{name: getattr(self, name) for name in _TUNABLES})
        if self.token is not None and not _header_safe(self.token):
            raise ValueError(
                "the MES bearer token must be printable ASCII without spaces; check mes.token_file or "
                "mes.token_env"
            )
        if self.hmac_key is not None and not self.hmac_key:
            raise ValueError("the MES HMAC key is empty; check mes.hmac_key_file")

    @classmethod
    def from_mes(cls, mes: MesConfig) -> WebhookConfig:
        """The settings of `[mes]`, secrets read now; a ValueError names the key that is wrong."""
        if mes.url is None:
            raise ValueError("mes.url is not set: there is no MES webhook to deliver to")
        token = None
        if mes.token_file is not None:
            token = _read_secret(mes.token_file, "mes.token_file").decode("utf-8", errors="replace")
        elif mes.token_env is not None:
            token = os.environ.get(mes.token_env, "").strip()
            if not token:
                raise ValueError(f"mes.token_env: the environment variable {mes.token_env} is not set")
        hmac_key = _read_secret(mes.hmac_key_file, "mes.hmac_key_file") if mes.hmac_key_file else None
        tunables = {name: getattr(mes, name) for name in _TUNABLES}
        return cls(url=mes.url, token=token, hmac_key=hmac_key, **tunables)


def _read_secret(path: Path, key: str) -> bytes:
    try:
        secret = path.read_bytes().strip()
    except OSError as exc:
        raise ValueError(
            f"{key}: cannot read {path} ({exc.strerror}); check the path and its permissions"
        ) from None
    if not secret:
        raise ValueError(f"{key}: {path} is empty")
    return secret


def _header_safe(value: str) -> bool:
    return value.isascii() and value.isprintable() and " " not in value and bool(value)


def tls_context(config: WebhookConfig) -> ssl.SSLContext:
    """Verification always on: against `ca_file` only, or the system's trust store plus certifi's.
    With `client_cert`, the client certificate (and `client_key`) for mutual TLS."""
    try:
        if config.ca_file is not None:
            context = ssl.create_default_context(cafile=str(config.ca_file))
        else:
            context = ssl.create_default_context()
            try:
                import certifi  # httpx's own dependency

                context.load_verify_locations(cafile=certifi.where())
            except (ImportError, OSError, ssl.SSLError):  # pragma: no cover - the system store remains
                pass
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(
            f"mes.ca_file: cannot load {config.ca_file} as PEM CA certificates ({exc})"
        ) from None
    if config.client_cert is not None:

        def refuse_password() -> str:
            # Without this, OpenSSL would prompt on the terminal and hang a service.
            raise ValueError("mes.client_key is encrypted; give the inspector an unencrypted key file")

        try:
            context.load_cert_chain(
                str(config.client_cert),
                str(config.client_key) if config.client_key is not None else None,
                password=refuse_password,
            )
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(
                f"mes.client_cert / mes.client_key: cannot load {config.client_cert} with "
                f"{config.client_key or 'the key in the same file'} ({exc}); both must be PEM and belong "
                "together"
            ) from None
    return context


@dataclass(frozen=True)
class HttpReply:
    """What the receiver answered: the status and, for errors, the start of the body."""

    status: int
    detail: str = ""


# (url, body, headers, read_timeout_s) -> reply; raises OSError (NoAnswer) or http.client.HTTPException
# when no answer came (refused, reset, timed out, TLS refused), BadRequest when this request cannot be
# sent at all.
Post = Callable[[str, bytes, Mapping[str, str], float], HttpReply]


class MesClient:
    """One keep-alive HTTP client for the MES: a `Post` (its `post` method) that reuses the connection."""

    def __init__(self, config: WebhookConfig) -> None:
        self._connect_timeout_s = config.connect_timeout_s
        self._client = httpx.Client(
            verify=tls_context(config),
            timeout=httpx.Timeout(config.read_timeout_s, connect=config.connect_timeout_s),
            follow_redirects=False,
            limits=httpx.Limits(max_connections=2, max_keepalive_connections=1),
            headers={"User-Agent": USER_AGENT},
        )

    def post(self, url: str, body: bytes, headers: Mapping[str, str], timeout_s: float) -> HttpReply:
        """POST; any HTTP status is returned, only a missing answer raises (NoAnswer)."""
        timeout = httpx.Timeout(timeout_s, connect=self._connect_timeout_s)
        try:
            with self._client.stream(
                "POST", url, content=body, headers=dict(headers), timeout=timeout
            ) as resp:
                status = resp.status_code
                start = _read_start(resp)
        except httpx.LocalProtocolError as exc:
            raise BadRequest(f"the request cannot be sent: {exc}") from exc
        except httpx.TransportError as exc:
            raise NoAnswer(f"{type(exc).__name__}: {exc}") from exc
        if 200 <= status < 300:
            return HttpReply(status)
        return HttpReply(status, start.decode("utf-8", errors="replace")[:_DETAIL_CHARS])

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> MesClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_start(response: httpx.Response) -> bytes:
    """The body up to _DRAIN_BYTES: read to its end it lets the connection be kept; a longer one is cut
    off, and httpx then closes that connection instead of reusing it. A body that breaks off after the
    status line does not change the answer."""
    chunks: list[bytes] = []
    size = 0
    try:
        for chunk in response.iter_bytes():
            chunks.append(chunk)
            size += len(chunk)
            if size > _DRAIN_BYTES:
                break
    except httpx.HTTPError:
        pass
    return b"".join(chunks)


def post_json(url: str, body: bytes, headers: Mapping[str, str], timeout_s: float) -> HttpReply:
    """One POST on a client of its own (default TLS verification, no redirects); see MesClient."""
    with MesClient(WebhookConfig(url=url, read_timeout_s=timeout_s)) as client:
        return client.post(url, body, headers, timeout_s)


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
    # Other 4xx, and 3xx (redirects are not followed): sending the same request again cannot succeed
    # until someone fixes the configuration or the payload.
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


# Printable ASCII but "%": left as it is in an Idempotency-Key.
_KEY_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "%")


def idempotency_key(result_id: str) -> str:
    """The result id as an HTTP header value: UTF-8 percent-encoded, printable ASCII ids unchanged."""
    return quote(result_id, safe=_KEY_SAFE)


def signature(key: bytes, timestamp: str, idem_key: str, body: bytes) -> str:
    """The X-EdgeInspect-Signature value: `sha256=` + HMAC-SHA256 over timestamp, key and body."""
    message = f"{timestamp}\n{idem_key}\n".encode("ascii") + body
    return "sha256=" + hmac.new(key, message, hashlib.sha256).hexdigest()


def build_request(config: WebhookConfig, item: OutboxItem, unix_s: int) -> tuple[bytes, dict[str, str]]:
    """The body and headers of one row's POST; raises if this row cannot be sent (encoding)."""
    body = item.payload.encode("utf-8")
    key = idempotency_key(item.result_id)
    headers = {"Content-Type": "application/json", "Idempotency-Key": key}
    if config.token is not None:
        headers["Authorization"] = f"Bearer {config.token}"
    if config.hmac_key is not None:
        timestamp = str(unix_s)
        headers[TIMESTAMP_HEADER] = timestamp
        headers[SIGNATURE_HEADER] = signature(config.hmac_key, timestamp, key, body)
    for name, value in headers.items():
        if not (value.isascii() and value.isprintable()):
            raise BadRequest(f"header {name} is not printable ASCII: {value[:80]!r}")
    return body, headers


def deliver_once(
    store: RecordStore,
    config: WebhookConfig,
    now_ns: int,
    post: Post | None = None,
    rng: random.Random | None = None,
    cancel: threading.Event | None = None,
) -> DeliveryReport:
    """POST up to `config.batch` due deliveries, oldest first, and record each outcome in the outbox.

    2xx: delivered (all of a pass's deliveries marked in one transaction, after their 2xx). No answer,
    408, 425, 429 or 5xx: retried later with back-off, and the pass stops there (the receiver is
    unwell; the rest would fail the same way); an unexpected exception from `post` is treated the same
    and logged. At the `max_attempts`-th failure, or for any other status, or when the row's request
    cannot be built: dead, kept in the outbox for `edge-inspect records --requeue-dead`, and the pass
    goes on. `cancel` is checked between POSTs so that a shutdown waits for at most one request.
    Without `post`, a client for this pass only is opened (a deliverer keeps one).
    """
    if post is None:
        with MesClient(config) as client:
            return deliver_once(store, config, now_ns, client.post, rng, cancel)
    rng = rng or random.Random()
    delivered: list[int] = []
    dead = 0
    try:
        for item in store.due_deliveries(now_ns, config.batch):
            if cancel is not None and cancel.is_set():
                break
            attempts = item.attempts + 1
            halt = False
            try:
                body, headers = build_request(config, item, int(time.time()))
            except Exception as exc:
                outcome: Outcome = "dead"
                error = f"cannot build the request: {type(exc).__name__}: {exc}"
            else:
                try:
                    reply = post(config.url, body, headers, config.read_timeout_s)
                except BadRequest as exc:
                    outcome, error = "dead", str(exc)
                except (OSError, http.client.HTTPException) as exc:
                    outcome, halt = "retry", True
                    error = f"no answer from {config.url}: {_describe(exc)}"
                except Exception as exc:
                    # A bug below us (a proxy library, say): counted like no answer, so that it is
                    # bounded by max_attempts instead of failing this same row at every pass.
                    outcome, halt = "retry", True
                    error = f"POST to {config.url} raised {type(exc).__name__}: {exc}"
                    log_event(
                        logger,
                        logging.ERROR,
                        "mes_deliverer_error",
                        result_id=item.result_id,
                        attempts=attempts,
                        error=error,
                    )
                else:
                    outcome = classify_status(reply.status)
                    halt = outcome == "retry"
                    error = f"HTTP {reply.status} from {config.url}" + (
                        f": {reply.detail}" if reply.detail else ""
                    )
            if outcome == "delivered":
                delivered.append(item.id)
                continue
            if outcome == "retry" and attempts >= config.max_attempts:
                outcome = "dead"
                error = f"{error} (gave up after {attempts} attempts, mes.max_attempts)"
            if outcome == "retry":
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
                return DeliveryReport(delivered=len(delivered), retried=1, dead=dead, halted=True)
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
            if halt:
                return DeliveryReport(delivered=len(delivered), dead=dead, halted=True)
        return DeliveryReport(delivered=len(delivered), dead=dead)
    finally:
        # Also when a POST raised past us: what got its 2xx is delivered. A crash before this line
        # only repeats those POSTs, under the same Idempotency-Key.
        if delivered:
            store.mark_delivered(delivered, now_ns)


def _describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, NoAnswer) else f"{type(exc).__name__}: {exc}"


class WebhookDeliverer:
    """Delivers the outbox of the record store at `db_path` from a thread of its own.

    `config` is the inspector's `MesConfig` (resolved with `WebhookConfig.from_mes`, so a wrong key
    fails here, at start-up) or a `WebhookConfig`. The thread opens its own RecordStore (connections
    are per thread) and keeps one MES client (keep-alive). It loops until `stop()`: immediately again
    while full batches are due, waits for the next due delivery (at most `idle_poll_s`) otherwise,
    backs off while the receiver is down, and logs any exception and goes on. Call `wake()` after
    queueing results to deliver them without waiting for the next poll.
    """

    def __init__(
        self,
        db_path: Path,
        config: WebhookConfig | MesConfig,
        metrics: InspectorMetrics | None = None,
        post: Post | None = None,
        idle_poll_s: float = 1.0,
        rng: random.Random | None = None,
    ) -> None:
        self._db_path = Path(db_path)
        self._config = WebhookConfig.from_mes(config) if isinstance(config, MesConfig) else config
        if self._config.token is not None and urlsplit(self._config.url).scheme != "https":
            log_event(logger, logging.WARNING, "mes_token_over_plain_http", url=self._config.url)
        self._metrics = metrics
        self._client = MesClient(self._config) if post is None else None
        self._post: Post = post if post is not None else self._client.post  # type: ignore[union-attr]
        self._idle_poll_s = idle_poll_s
        self._rng = rng or random.Random()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def config(self) -> WebhookConfig:
        return self._config

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
        if self._client is not None and not self.running:
            self._client.close()

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
            self._metrics.set_outbox_dead(store.count_dead())

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
