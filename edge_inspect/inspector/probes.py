"""What `/healthz` and `/readyz` answer: one check per line, "ok" or what is wrong (sinks/metrics.py
serves them; 200 when every check is "ok", else 503)."""

from __future__ import annotations

from collections.abc import Iterable

from edge_inspect.inspector.config import InspectorConfig
from edge_inspect.inspector.stages.base import Stage
from edge_inspect.sinks.retention import free_bytes


def stage_health(stages: Iterable[Stage], stall_s: float) -> dict[str, str]:
    """Liveness, per stage: "ok", or why not (its thread ended, or one item has held it too long)."""
    checks = {}
    for stage in stages:
        stalled = stage.stalled_s()
        if not stage.alive():
            checks[stage.name] = f"stopped ({stage.failure!r})" if stage.failure else "stopped"
        elif stalled > stall_s:
            checks[stage.name] = f"stuck on one item for {stalled:.0f} s (limit {stall_s:.0f} s)"
        else:
            checks[stage.name] = "ok"
    return checks


def readiness(
    config: InspectorConfig, bus_endpoint: str | None, store_writable: bool, health: dict[str, str]
) -> dict[str, str]:
    """Readiness: able to take frames now: a model loaded (the inspector exists only with one), the bus
    bound, the store writable, the disk not full, and every stage healthy."""
    free_mb = free_bytes(config.records.workdir) / 2**20
    minimum = config.metrics.min_free_disk_mb
    return {
        "model": "ok",
        "bus": "ok" if bus_endpoint else "not bound",
        "store": "ok" if store_writable else "the record database refuses writes",
        "disk": "ok" if free_mb >= minimum else f"{free_mb:.0f} MiB free, below {minimum:.0f} MiB",
        **{name: state for name, state in health.items() if state != "ok"},
    }
