"""Retention for the image archive and the record database, and the disk-space check behind /readyz.

The archive is `images/YYYY-MM-DD/<camera>/<result>.png`, so whole capture days are the unit of pruning:
days older than the age limit go first, then the oldest days until the archive fits its size limit. A
pruned image's record stays (its verdict, score and defects are the traceability); its `image_path` is
cleared so nobody looks for a file that is gone. Records older than their age limit are deleted only when
nothing still depends on them: delivered to the MES (or never queued) and not labelled for retraining.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from edge_inspect.logs import log_event
from edge_inspect.sinks.record_store import RecordStore

log = logging.getLogger(__name__)

DAY_FORMAT = "%Y-%m-%d"


@dataclass(frozen=True)
class RetentionPolicy:
    """None disables a limit."""

    images_max_age_days: float | None = None
    images_max_bytes: int | None = None
    records_max_age_days: float | None = None


@dataclass(frozen=True)
class PruneReport:
    image_days_removed: int = 0
    image_bytes_removed: int = 0
    records_removed: int = 0


def day_directories(image_dir: Path) -> list[tuple[datetime, Path]]:
    """The archive's day directories, oldest first; anything else in the folder is left alone."""
    days = []
    for path in image_dir.iterdir() if image_dir.is_dir() else ():
        try:
            day = datetime.strptime(path.name, DAY_FORMAT).replace(tzinfo=timezone.utc)
        except ValueError:
            continue
        if path.is_dir():
            days.append((day, path))
    return sorted(days)


def tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def days_to_remove(
    days: list[tuple[datetime, int]], now: datetime, max_age_days: float | None, max_bytes: int | None
) -> int:
    """How many of the oldest days (given oldest first, with their sizes) to remove. Pure."""
    count = 0
    if max_age_days is not None:
        # A day leaves once its last moment is older than the limit.
        cutoff = now - timedelta(days=max_age_days)
        count = sum(1 for day, _ in days if day + timedelta(days=1) <= cutoff)
    if max_bytes is not None:
        total = sum(size for _, size in days[count:])
        while count < len(days) and total > max_bytes:
            total -= days[count][1]
            count += 1
    return count


def prune(
    store: RecordStore, image_dir: Path, policy: RetentionPolicy, now: datetime | None = None
) -> PruneReport:
    """Apply `policy` once; safe to call while the inspector writes (today's directory is never removed
    by age, and a day removed for size is removed whole)."""
    now = now or datetime.now(timezone.utc)
    days = day_directories(image_dir)
    sized = [(day, tree_bytes(path)) for day, path in days]
    remove = days_to_remove(sized, now, policy.images_max_age_days, policy.images_max_bytes)
    removed_bytes = 0
    for (_, path), (_, size) in zip(days[:remove], sized[:remove], strict=True):
        store.forget_images_under(str(path) + "/")
        shutil.rmtree(path, ignore_errors=True)
        removed_bytes += size
    records = 0
    if policy.records_max_age_days is not None:
        cutoff_ns = int((now - timedelta(days=policy.records_max_age_days)).timestamp() * 1e9)
        records = store.delete_settled_before(cutoff_ns)
    report = PruneReport(remove, removed_bytes, records)
    if remove or records:
        log_event(log, logging.INFO, "retention_pruned", **report.__dict__)
    return report


def free_bytes(path: Path) -> int:
    """Free space on the file system holding `path` (or its nearest existing parent)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free
