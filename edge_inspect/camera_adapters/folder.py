"""Replay image files as a camera: a folder of captures (the ELPV replay gives it the data set's paths).

Images keep their pixel format (mono stays mono, 16-bit stays 16-bit) so the inspector sees what the
real camera would send. A file that cannot be read is logged, counted and skipped: one bad file on a
line-side share must not stop the station.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np

from edge_inspect.bus.contracts import DTYPES
from edge_inspect.camera_adapters.base import SourceError, SourceFrame
from edge_inspect.logs import log_event

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})


def list_images(folder: Path | str) -> list[Path]:
    """Image files under `folder`, recursively, in sorted path order (suffixes matched case-blind)."""
    root = Path(folder)
    if not root.is_dir():
        raise SourceError(f"image folder {str(root)!r} does not exist or is not a directory; check the path")
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def read_image(path: Path) -> np.ndarray:
    """The image at `path` as the contract carries it: (H, W) or (H, W, 3) BGR, uint8 or uint16.

    Raises OSError when the file cannot be read and ValueError when it holds no usable image.
    """
    # Decoding from bytes separates an unreadable file from an undecodable one in the error.
    encoded = np.fromfile(path, dtype=np.uint8)
    if encoded.size == 0:
        raise ValueError("the file is empty")
    image = cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError("not a decodable image (corrupt, truncated or an unsupported format)")
    if image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if str(image.dtype) not in DTYPES:
        raise ValueError(f"pixel type {image.dtype} is not one of {DTYPES}; convert the file")
    return image


# Decoded images kept for later passes of a looping replay, so a gateway does not decode the same files
# again and again; past this budget the remaining files are read from disk on every pass.
LOOP_CACHE_BYTES = 256 * 1024 * 1024


class FolderSource:
    """The images in `paths`, in order, once or (with `loop`) forever; part_id is the file stem."""

    def __init__(
        self, paths: Sequence[Path], loop: bool = False, cache_bytes: int = LOOP_CACHE_BYTES
    ) -> None:
        if not paths:
            raise SourceError(
                "no images to replay; the folder holds no "
                f"{'/'.join(sorted(s.lstrip('.') for s in IMAGE_SUFFIXES))} files"
            )
        self.paths = list(paths)
        self.loop = loop
        self.unreadable = 0
        self._cache: dict[Path, np.ndarray] = {}
        self._cache_budget = cache_bytes if loop else 0

    def __iter__(self) -> Iterator[SourceFrame]:
        while True:
            delivered = False
            for path in self.paths:
                image = self._cache.get(path)
                if image is None:
                    try:
                        image = read_image(path)
                    except (OSError, ValueError) as exc:
                        self.unreadable += 1
                        log_event(logger, logging.WARNING, "image_unreadable", path=str(path), error=str(exc))
                        continue
                    if image.nbytes <= self._cache_budget:
                        self._cache[path] = image
                        self._cache_budget -= image.nbytes
                delivered = True
                yield SourceFrame(image, path.stem)
            if not self.loop:
                return
            if not delivered:
                # Looping over files that all fail would spin forever without sending a frame.
                raise SourceError(f"none of the {len(self.paths)} images could be read; check the files")
