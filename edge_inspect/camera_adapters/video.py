"""Frames from anything OpenCV can open: a video file, an RTSP/HTTP stream, or a USB camera by index."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from types import TracebackType

import cv2

from edge_inspect.camera_adapters.base import SourceError, SourceFrame
from edge_inspect.logs import log_event

logger = logging.getLogger(__name__)


def capture_target(uri: str) -> str | int:
    """OpenCV opens USB cameras by integer index: "0" means device 0, anything else is a path or URL."""
    return int(uri) if uri.isdigit() else uri


def open_capture(uri: str) -> cv2.VideoCapture:
    capture = cv2.VideoCapture(capture_target(uri))
    if not capture.isOpened():
        capture.release()
        raise SourceError(
            f"cannot open video source {uri!r}: for a file, check that it exists and is a format FFmpeg "
            "reads; for rtsp:// or http://, check the URL, the credentials and that the camera is reachable; "
            "for a USB index, check that the device exists (ls /dev/video*) and no other process holds it"
        )
    return capture


class VideoSource:
    """Frames of `uri` as BGR images. With `loop`, a file restarts at its end and a stream reconnects.

    The source is opened at construction so that a wrong URI fails before the camera starts; iterate it
    once, or close it when it is not iterated.
    """

    def __init__(self, uri: str, loop: bool = False) -> None:
        self.uri = uri
        self.loop = loop
        self._capture: cv2.VideoCapture | None = open_capture(uri)

    def __iter__(self) -> Iterator[SourceFrame]:
        capture = self._capture if self._capture is not None else open_capture(self.uri)
        self._capture = None
        try:
            while True:
                ok, image = capture.read()
                if ok:
                    yield SourceFrame(image)
                    continue
                if not self.loop:
                    log_event(logger, logging.INFO, "video_ended", uri=self.uri)
                    return
                # Reopening restarts a file and reconnects a dropped stream alike.
                capture.release()
                capture = open_capture(self.uri)
                ok, image = capture.read()
                if not ok:
                    raise SourceError(f"video source {self.uri!r} reopened but delivers no frames; check it")
                log_event(logger, logging.INFO, "video_restarted", uri=self.uri)
                yield SourceFrame(image)
        finally:
            capture.release()

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None

    def __enter__(self) -> VideoSource:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
