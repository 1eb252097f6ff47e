"""Housekeeping: slow chores in a thread of their own with its own database connection, so they never hold
up the record stage for longer than one statement.

- every second, the cameras' health (`camera_health.CameraBook`) saved to the record store when it
  changed, for the plant outputs and the console;
- every `retention.interval_s`, the retention policy, when one is configured.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time

from edge_inspect.inspector.camera_health import CameraBook
from edge_inspect.inspector.config import InspectorConfig
from edge_inspect.logs import log_event
from edge_inspect.sinks.record_store import RecordStore
from edge_inspect.sinks.retention import RetentionPolicy, prune

log = logging.getLogger(__name__)

HEALTH_SAVE_INTERVAL_S = 1.0


def policy_of(config: InspectorConfig) -> RetentionPolicy:
    retention = config.retention
    gigabytes = retention.images_max_gb
    return RetentionPolicy(
        images_max_age_days=retention.images_max_age_days,
        images_max_bytes=None if gigabytes is None else int(gigabytes * 1e9),
        records_max_age_days=retention.records_max_age_days,
    )


class Housekeeping:
    def __init__(self, config: InspectorConfig, stop: threading.Event, cameras: CameraBook) -> None:
        self._config = config
        self._stop = stop
        self._cameras = cameras
        self._saved_version = -1
        self._thread = threading.Thread(target=self._run, name="edge-inspect-housekeeping", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout_s: float | None = None) -> None:
        self._thread.join(timeout_s)

    def _run(self) -> None:
        policy = policy_of(self._config)
        next_prune = time.monotonic()
        store = RecordStore(self._config.db_path)
        try:
            while True:
                self._save_health(store)
                if self._config.retention.enabled and time.monotonic() >= next_prune:
                    next_prune = time.monotonic() + self._config.retention.interval_s
                    try:
                        prune(store, self._config.image_dir, policy)
                    except (OSError, sqlite3.Error) as exc:  # a failed pass is retried at the next interval
                        log_event(log, logging.ERROR, "retention_failed", error=repr(exc))
                if self._stop.wait(HEALTH_SAVE_INTERVAL_S):
                    self._save_health(store)  # the last frames before a stop
                    return
        finally:
            store.close()

    def _save_health(self, store: RecordStore) -> None:
        version, readings = self._cameras.snapshot()
        if version == self._saved_version:
            return
        try:
            store.save_camera_health(readings)
            self._saved_version = version
        except sqlite3.Error as exc:  # retried at the next tick; the record stage reports a failing store
            log_event(log, logging.WARNING, "camera_health_save_failed", error=repr(exc))
