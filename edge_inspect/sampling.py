"""Reproducible sampling shared by both halves: which OK parts the inspector archives for retraining and
which labelled parts retraining holds out are cut by the same hash of the result id."""

from __future__ import annotations

import zlib


def stable_fraction(key: str) -> float:
    """A number in [0, 1) fixed by `key` alone: the same part lands on the same side of any sampling
    cut, in every run and on every machine."""
    return zlib.crc32(key.encode()) / 2**32
