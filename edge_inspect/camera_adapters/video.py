"""Frames from anything OpenCV can open: a video file, an HTTP stream, or a USB camera by index.

`open_capture` is shared with the RTSP adapter (`rtsp.py`, for IP cameras that must be recovered when they
drop): it opens a `cv2.VideoCapture` with open parameters (timeouts) and FFmpeg options, and never puts a
URL's password into an error message.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Sequence
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

import cv2

from edge_inspect.camera_adapters.base import SourceError, SourceFrame
from edge_inspect.logs import log_event

logger = logging.getLogger(__name__)

# OpenCV's FFmpeg backend reads its demuxer options from this variable at every open ("key;value|key;value").
FFMPEG_OPTIONS_VARIABLE = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
# The variable is process-wide: opens with options take turns, so two cameras never see each other's.
_ffmpeg_options_lock = threading.Lock()

OPEN_HINT = (
    "for a file, check that it exists and is a format FFmpeg reads; for rtsp:// or http://, check the URL, "
    "the credentials and that the camera is reachable; for a USB index, check that the device exists "
    "(ls /dev/video*) and no other process holds it"
)


def capture_target(uri: str) -> str | int:
    """OpenCV opens USB cameras by integer index: "0" means device 0, anything else is a path or URL."""
    return int(uri) if uri.isdigit() else uri


def redact_uri(uri: str) -> str:
    """`uri` without the password of its user info (rtsp://user:secret@host -> rtsp://user:***@host), for
    logs and error messages."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def open_capture(
    uri: str,
    *,
    backend: int = cv2.CAP_ANY,
    params: Sequence[int] = (),
    ffmpeg_options: str | None = None,
    hint: str = OPEN_HINT,
) -> cv2.VideoCapture:
    """An opened capture of `uri`, or SourceError saying what to check (`hint`).

    `params`: OpenCV open parameters as (property, value) pairs flattened, e.g. the FFmpeg backend's open and
    read timeouts. `ffmpeg_options`: FFmpeg demuxer options ("rtsp_transport;udp"), which OpenCV only takes
    from an environment variable read at open time: for this open they are appended to the variable's value
    (options an operator set there still apply; ours win a clash) and the value is restored afterwards."""
    if ffmpeg_options is None:
        capture = cv2.VideoCapture(capture_target(uri), backend, list(params))
    else:
        with _ffmpeg_options_lock:
            previous = os.environ.get(FFMPEG_OPTIONS_VARIABLE)
            # FFmpeg applies the options in order, so a key given twice takes the later value.
            os.environ[FFMPEG_OPTIONS_VARIABLE] = "|".join(filter(None, [previous, ffmpeg_options]))
            try:
                capture = cv2.VideoCapture(capture_target(uri), backend, list(params))
            finally:
                if previous is None:
                    del os.environ[FFMPEG_OPTIONS_VARIABLE]
                else:
                    os.environ[FFMPEG_OPTIONS_VARIABLE] = previous
    if not capture.isOpened():
        capture.release()
        raise SourceError(f"cannot open video source {redact_uri(uri)!r}: {hint}")
    return capture


class VideoSource:
    """Frames of `uri` as BGR images. With `loop`, a file restarts at its end and a stream reconnects once
    (an IP camera that must be recovered for as long as it takes is an `rtsp.RtspSource`).

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
                    log_event(logger, logging.INFO, "video_ended", uri=redact_uri(self.uri))
                    return
                # Reopening restarts a file and reconnects a dropped stream alike.
                capture.release()
                capture = open_capture(self.uri)
                ok, image = capture.read()
                if not ok:
                    raise SourceError(
                        f"video source {redact_uri(self.uri)!r} reopened but delivers no frames; check it"
                    )
                log_event(logger, logging.INFO, "video_restarted", uri=redact_uri(self.uri))
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
