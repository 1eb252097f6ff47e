"""Housekeeping: the retention policy applied every `retention.interval_s`, in a thread of its own with
its own database connection, so pruning never holds up the record stage for longer than one delete."""

from __future__ import annotations

import logging
import sqlite3
import threading

from edge_inspect.inspector.config import InspectorConfig
from edge_inspect.logs import log_event
from edge_inspect.sinks.record_store import RecordStore
from edge_inspect.sinks.retention import RetentionPolicy, prune

log = logging.getLogger(__name__)


def policy_of(config: InspectorConfig) -> RetentionPolicy:
    retention = config.retention
    gigabytes = retention.images_max_gb
    return RetentionPolicy(
        images_max_age_days=retention.images_max_age_days,
        images_max_bytes=None if gigabytes is None else int(gigabytes * 1e9),
        records_max_age_days=retention.records_max_age_days,
    )


class Housekeeping:
    def __init__(self, config: InspectorConfig, stop: threading.Event) -> None:
        self._config = config
        self._stop = stop
        self._thread = threading.Thread(target=self._run, name="edge-inspect-housekeeping", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout_s: float | None = None) -> None:
        self._thread.join(timeout_s)

    def _run(self) -> None:
        policy = policy_of(self._config)
        store = RecordStore(self._config.db_path)
        try:
            while True:
                try:
                    prune(store, self._config.image_dir, policy)
                except (OSError, sqlite3.Error) as exc:  # a failed pass is retried at the next interval
                    log_event(log, logging.ERROR, "retention_failed", error=repr(exc))
                if self._stop.wait(self._config.retention.interval_s):
                    return
        finally:
            store.close()
