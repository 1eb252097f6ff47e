"""One camera entry of the line config turned into what a gateway runs: the publishing settings, the frame
source for its `source` and its part-id feed. Adapters are imported only for the source in use, so a
gateway for an RTSP camera never needs the GenICam bindings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from edge_inspect.bus.security import ClientKeys
from edge_inspect.camera_adapters.base import CameraConfig, FrameSource, PartIdFeed
from edge_inspect.camera_adapters.config import (
    AravisCamera,
    CameraCommon,
    FolderCamera,
    GenTLCamera,
    RtspCamera,
    SyntheticCamera,
    VideoCamera,
)


@dataclass
class OpenedCamera:
    config: CameraConfig
    source: FrameSource
    part_ids: PartIdFeed | None

    def close(self) -> None:
        """Release the device and the trigger connection (each holds them from the moment it opened)."""
        close = getattr(self.source, "close", None)
        if close is not None:
            close()
        if self.part_ids is not None:
            self.part_ids.close()


def publishing(entry: CameraCommon) -> CameraConfig:
    """How the entry's frames go on the bus."""
    if (entry.key is None) != (entry.server_key is None):
        raise ValueError(f"camera {entry.id}: key and server_key go together (CURVE), or neither")
    return CameraConfig(
        camera_id=entry.id,
        station=entry.station,
        endpoint=entry.endpoint,
        delivery=entry.delivery,
        fps=entry.fps,
        encoding=entry.encoding,
        jpeg_quality=entry.jpeg_quality,
        loop=getattr(entry, "loop", False),
        keys=ClientKeys(entry.key, entry.server_key) if entry.key and entry.server_key else None,
        replay_bytes=max(1, int(entry.replay_mb * 1024 * 1024)),
        drain_s=entry.drain_s,
        state_dir=entry.state_dir,
    )


def frame_source(entry: CameraCommon, should_stop: Callable[[], bool]) -> FrameSource:
    """The adapter for the entry's `source`, opened."""
    if isinstance(entry, SyntheticCamera):
        from edge_inspect.camera_adapters.synthetic import SyntheticSource

        return SyntheticSource(entry.width, entry.height, entry.channels, entry.defect_rate, entry.seed)
    if isinstance(entry, FolderCamera):
        from edge_inspect.camera_adapters.folder import FolderSource, list_images

        return FolderSource(list_images(entry.path), loop=entry.loop)
    if isinstance(entry, VideoCamera):
        from edge_inspect.camera_adapters.video import VideoSource

        return VideoSource(entry.uri, loop=entry.loop)
    if isinstance(entry, AravisCamera):
        from edge_inspect.camera_adapters.aravis import AravisSource

        return AravisSource(entry.settings(), should_stop)
    if isinstance(entry, GenTLCamera):
        from edge_inspect.camera_adapters.gentl import GenTLSource

        return GenTLSource(entry.settings(), should_stop)
    if isinstance(entry, RtspCamera):
        from edge_inspect.camera_adapters.rtsp import RtspSource

        return RtspSource(entry.settings(), should_stop)
    raise ValueError(f"camera {entry.id}: no adapter for source {type(entry).__name__}")


def open_camera(entry: CameraCommon, should_stop: Callable[[], bool]) -> OpenedCamera:
    opened = OpenedCamera(publishing(entry), frame_source(entry, should_stop), None)
    if entry.part_ids is not None:
        from edge_inspect.camera_adapters.part_ids import open_feed

        try:
            opened.part_ids = open_feed(entry.part_ids)
        except BaseException:
            opened.close()
            raise
    return opened
