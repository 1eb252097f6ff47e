"""`edge-inspect camera SOURCE` or `edge-inspect camera --config FILE --camera ID`: run one camera gateway
that publishes frames on the frame bus.

Only the standard library is imported here; numpy, OpenCV and ZeroMQ load when the command runs, so
building the parser stays fast for every other subcommand.
"""

from __future__ import annotations

import argparse
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edge_inspect.camera_adapters.assemble import OpenedCamera
    from edge_inspect.camera_adapters.base import FrameSource
    from edge_inspect.camera_adapters.config import CameraCommon

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"


def register(subparsers: argparse._SubParsersAction) -> None:
    camera = subparsers.add_parser(
        "camera",
        help="run a camera gateway that sends frames to the inspector",
        description=(
            "Publish frames from a source on the ZeroMQ frame bus, paced at --fps, until the source ends, a "
            "limit is reached or SIGINT/SIGTERM arrives. Either run one [[cameras]] entry of the line config "
            "(--config FILE --camera ID: source, settings, part-id trigger and publishing all from the "
            "file), or name a SOURCE with its options. The last line of stdout is a JSON object with the "
            "run's statistics. Needs numpy, OpenCV, pyzmq and pydantic only (no torch, no onnxruntime)."
        ),
    )
    camera.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="line config whose [camera_defaults] and [[cameras]] describe this camera (needs --camera)",
    )
    camera.add_argument("--camera", default=None, metavar="ID", help="the id of the [[cameras]] entry to run")
    sources = camera.add_subparsers(dest="source", required=False, metavar="SOURCE")
    common = _common_options()

    synthetic = sources.add_parser(
        "synthetic",
        parents=[common],
        help="seeded synthetic machined discs, some with scratches, spots or cracks",
        description="Synthetic parts: reproducible for a --seed, part ids syn-000000, syn-000001, ...",
    )
    synthetic.add_argument("--width", type=int, default=640, help="image width in pixels (default: 640)")
    synthetic.add_argument("--height", type=int, default=480, help="image height in pixels (default: 480)")
    synthetic.add_argument(
        "--channels", type=int, choices=(1, 3), default=3, help="1 for mono, 3 for BGR (default: 3)"
    )
    synthetic.add_argument(
        "--defect-rate", type=float, default=0.1, help="fraction of parts with a defect, 0..1 (default: 0.1)"
    )
    synthetic.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")

    folder = sources.add_parser(
        "folder",
        parents=[common],
        help="replay the images in a folder",
        description=(
            "Replay png/jpg/jpeg/bmp/tif/tiff files found recursively under PATH, in sorted order, keeping "
            "their pixel format (mono, BGR, 8 or 16 bit). The part id is the file name without extension. "
            "Unreadable files are logged and skipped."
        ),
    )
    folder.add_argument("path", metavar="PATH", help="folder of images")

    elpv = sources.add_parser(
        "elpv",
        parents=[common],
        help="replay the ELPV solar-cell images of one split",
        description=(
            "Replay the ELPV electroluminescence solar-cell images (300x300 mono) from the installed "
            "elpv-dataset package, using the project's fixed train/val/test split."
        ),
    )
    elpv.add_argument(
        "--split",
        choices=("train", "val", "test", "all"),
        default="test",
        help="which split to replay (default: test, the images no model was trained on)",
    )

    video = sources.add_parser(
        "video",
        parents=[common],
        help="frames from a video file, an RTSP/HTTP stream or a USB camera",
        description=(
            "Frames from anything OpenCV's VideoCapture opens. With --loop a file restarts at its end and "
            "a dropped stream reconnects."
        ),
    )
    video.add_argument(
        "uri", metavar="URI", help="video file path, rtsp:// or http:// URL, or a USB camera index such as 0"
    )

    rtsp = sources.add_parser(
        "rtsp",
        parents=[common],
        help="an RTSP / H.264 IP camera, with reconnect and a stale-stream watchdog",
        description=(
            "Frames from an RTSP camera through OpenCV's FFmpeg backend (docs/cameras.md). A stream that "
            "fails is reopened with a capped back-off; one that delivers nothing for --stale-after-s is "
            "reported (its last frame is never sent again). Live: paced by the camera, so --fps defaults "
            "to 0; a lower --fps judges that many of its frames a second."
        ),
    )
    rtsp.add_argument("url", metavar="URL", help="rtsp://[user:password@]host[:port]/path (or rtsps://)")
    rtsp.add_argument(
        "--transport",
        choices=("tcp", "udp"),
        default="tcp",
        help="tcp: RTP inside the RTSP connection, no loss; udp: lower latency, lossy (default: tcp)",
    )
    for flag, default, text in (
        ("--open-timeout-s", 10.0, "longest wait to connect and read the stream's description"),
        ("--read-timeout-s", 5.0, "longest wait for one frame before the stream is reopened"),
        ("--stale-after-s", 5.0, "report the camera when it delivered nothing new for this long"),
        ("--reconnect-first-s", 0.5, "first wait before reopening a failed stream; it doubles"),
        ("--reconnect-max-s", 10.0, "longest wait between reopening attempts"),
    ):
        rtsp.add_argument(flag, type=float, default=default, help=f"{text} (default: {default:g})")
    rtsp.add_argument(
        "--expected-fps", type=float, default=None, help="the camera's frame rate, if its stream omits it"
    )
    rtsp.set_defaults(fps=0.0)

    for parser in (synthetic, folder, elpv, video, rtsp):
        parser.set_defaults(handler=run)
    camera.set_defaults(handler=run_from_config)


def run_from_config(args: argparse.Namespace) -> int:
    """`--config FILE --camera ID`: run that entry of the line config."""
    import sys
    from pathlib import Path

    if args.source is not None:
        return run(args)
    if args.config is None or args.camera is None:
        print(
            "edge-inspect camera: name a SOURCE (synthetic, folder, elpv, video), or give --config FILE "
            "--camera ID to run an entry of the line config",
            file=sys.stderr,
        )
        return 2
    from edge_inspect.camera_adapters.config import CameraConfigError, load_line_cameras

    try:
        entry = load_line_cameras(Path(args.config)).camera(args.camera)
    except (CameraConfigError, KeyError) as exc:
        print(f"edge-inspect camera: {str(exc).strip(chr(34) + chr(39))}", file=sys.stderr)
        return 2
    return _publish(args, lambda stop: _open_entry(entry, stop), source_name=entry.source)


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--endpoint",
        default=DEFAULT_ENDPOINT,
        help=(
            "ZeroMQ endpoint the inspector binds, tcp://HOST:PORT or ipc:///PATH "
            f"(default: {DEFAULT_ENDPOINT})"
        ),
    )
    common.add_argument("--camera-id", default="cam-1", help="stable name of this camera (default: cam-1)")
    common.add_argument("--station", default="station-1", help="inspection station name (default: station-1)")
    common.add_argument(
        "--fps",
        type=float,
        default=10.0,
        help="frames per second; 0 sends as fast as possible (default: 10; rtsp: 0, the camera paces itself)",
    )
    common.add_argument(
        "--delivery",
        choices=("lossless", "latest"),
        default="lossless",
        help=(
            "lossless: every frame is kept until the inspector acknowledges it recorded, and resent after "
            "an inspector restart; the camera waits when the inspector is behind or the replay buffer is "
            "full; latest: never wait, drop frames the inspector cannot take (default: lossless)"
        ),
    )
    common.add_argument(
        "--encoding",
        choices=("raw", "jpeg"),
        default="raw",
        help="raw pixels, or JPEG-compress at the gateway for slow links (8-bit images only) (default: raw)",
    )
    common.add_argument(
        "--jpeg-quality", type=int, default=90, help="JPEG quality 0..100 with --encoding jpeg (default: 90)"
    )
    common.add_argument(
        "--key",
        default=None,
        metavar="FILE",
        help="this camera's CURVE secret key file (NAME.key_secret from `edge-inspect keys`), for an "
        "inspector that requires authenticated cameras; needs --server-key",
    )
    common.add_argument(
        "--server-key", default=None, metavar="FILE", help="the inspector's public key file (NAME.key)"
    )
    common.add_argument(
        "--replay-mb",
        type=float,
        default=256.0,
        help="lossless: MiB of frames kept until acknowledged; when full, capture waits (default: 256)",
    )
    common.add_argument(
        "--drain-s",
        type=float,
        default=30.0,
        help="lossless: seconds a finished run waits for its last acknowledgements (default: 30)",
    )
    common.add_argument(
        "--state-dir",
        default=None,
        metavar="DIR",
        help="keep this camera's sequence journal here, so that after being killed the gateway continues "
        "its sequence numbers and reports the frames it lost (lost_at_restart)",
    )
    common.add_argument("--loop", action="store_true", help="restart a folder or video file at its end")
    common.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    common.add_argument("--seconds", type=float, default=None, help="stop after this many seconds")
    return common


def run(args: argparse.Namespace) -> int:
    """Run the camera until it stops; print its statistics as JSON on the last line of stdout."""
    return _publish(args, lambda stop: _open_from_args(args, stop), source_name=args.source)


def _open_from_args(args: argparse.Namespace, stop: threading.Event) -> OpenedCamera:
    from pathlib import Path

    from edge_inspect.bus.security import ClientKeys
    from edge_inspect.camera_adapters.assemble import OpenedCamera
    from edge_inspect.camera_adapters.base import CameraConfig

    if (args.key is None) != (args.server_key is None):
        raise ValueError(
            "--key and --server-key go together: this camera's secret and the inspector's public key"
        )
    keys = ClientKeys(Path(args.key), Path(args.server_key)) if args.key else None
    config = CameraConfig(
        camera_id=args.camera_id,
        station=args.station,
        endpoint=args.endpoint,
        delivery=args.delivery,
        fps=args.fps,
        encoding=args.encoding,
        jpeg_quality=args.jpeg_quality,
        loop=args.loop,
        max_frames=args.max_frames,
        seconds=args.seconds,
        keys=keys,
        replay_bytes=max(1, int(args.replay_mb * 1024 * 1024)),
        drain_s=args.drain_s,
        state_dir=Path(args.state_dir) if args.state_dir else None,
    )
    return OpenedCamera(config, _build_source(args, stop), None)


def _open_entry(entry: CameraCommon, stop: threading.Event) -> OpenedCamera:
    from edge_inspect.camera_adapters.assemble import open_camera

    return open_camera(entry, stop.is_set)


def _publish(
    args: argparse.Namespace, opener: Callable[[threading.Event], OpenedCamera], source_name: str
) -> int:
    import json
    import os
    import signal
    import sys
    from dataclasses import asdict

    import cv2

    from edge_inspect.camera_adapters.base import SourceError, run_camera

    # OpenCV and its FFmpeg write their own unstructured warnings to stderr ("Connection refused" for every
    # reconnect attempt); our events say the same as JSON. FFmpeg's level 8 is "fatal only".
    if getattr(args, "verbose", 0) < 2:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "8")
    stop = threading.Event()
    # Before opening: a device that takes long to come up can still be stopped.
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            opened = opener(stop)
        # RuntimeError: the ELPV package is missing; its message says how to install it.
        except (RuntimeError, ValueError) as exc:
            print(f"edge-inspect camera: {exc}", file=sys.stderr)
            return 2
        try:
            stats = run_camera(opened.source, opened.config, stop, opened.part_ids)
        except (SourceError, ValueError) as exc:
            print(f"edge-inspect camera: {exc}", file=sys.stderr)
            return 1
        finally:
            opened.close()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    summary = {"camera_id": opened.config.camera_id, "source": source_name, **asdict(stats)}
    unreadable = getattr(opened.source, "unreadable", None)
    if unreadable is not None:
        summary["unreadable"] = unreadable
    print(json.dumps(summary), flush=True)
    return 0


def _build_source(args: argparse.Namespace, stop: threading.Event) -> FrameSource:
    if args.source == "rtsp":
        from edge_inspect.camera_adapters.rtsp import RtspSettings, RtspSource

        settings = RtspSettings(
            url=args.url,
            transport=args.transport,
            open_timeout_s=args.open_timeout_s,
            read_timeout_s=args.read_timeout_s,
            stale_after_s=args.stale_after_s,
            reconnect_first_s=args.reconnect_first_s,
            reconnect_max_s=args.reconnect_max_s,
            expected_fps=args.expected_fps,
        )
        return RtspSource(settings, stop.is_set)
    if args.source == "synthetic":
        from edge_inspect.camera_adapters.synthetic import SyntheticSource

        return SyntheticSource(args.width, args.height, args.channels, args.defect_rate, args.seed)
    if args.source == "video":
        from edge_inspect.camera_adapters.video import VideoSource

        return VideoSource(args.uri, loop=args.loop)
    from edge_inspect.camera_adapters.folder import FolderSource, list_images

    # The ELPV replay reads the data set's split from the lifecycle side (numpy only, no torch).
    from edge_inspect.training.datasets import elpv_paths

    paths = list_images(args.path) if args.source == "folder" else elpv_paths(args.split)
    return FolderSource(paths, loop=args.loop)
