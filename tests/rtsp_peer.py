"""A real RTSP camera for the tests: GStreamer's RTSP server (GstRtspServer) serving a live test pattern
encoded as H.264 by x264, on 127.0.0.1 only.

Run as a script by Debian's `/usr/bin/python3`, which has PyGObject (python3-gi), so the tests do not need
PyGObject in the venv; `RtspCamera` starts, kills, stalls and restarts it from the tests. Without the
Debian packages the tests fail and name `make peers`, they never skip.

    /usr/bin/python3 tests/rtsp_peer.py --port 0 [--drop-every N]

prints `ready PORT` on stdout once the server listens. `--drop-every N` drops every Nth frame before it is
encoded: a camera that loses frames, seen by the client as gaps in the stream's timestamps.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path

SYSTEM_PYTHON = "/usr/bin/python3"
FPS = 25
WIDTH, HEIGHT = 320, 240
MOUNT = "/cam"
INSTALL_HINT = (
    "run `make peers` (as root: apt-get install -y python3-gi gir1.2-gst-rtsp-server-1.0 "
    "gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly)"
)


def launch_line(fps: int = FPS) -> str:
    """The camera's pipeline: live colour bars moving one pixel a frame (no two frames alike for WIDTH
    frames, so a frame sent twice is visible), H.264 with one key frame a second, RTP payload 96.

    `gate` is where `--drop-every` drops raw frames."""
    return (
        f"( videotestsrc is-live=true pattern=smpte horizontal-speed=1 ! "
        f"video/x-raw,width={WIDTH},height={HEIGHT},"
        f"framerate={fps}/1 ! identity name=gate ! x264enc tune=zerolatency speed-preset=ultrafast "
        f"key-int-max={fps} ! rtph264pay name=pay0 pt=96 )"
    )


def serve(port: int, drop_every: int) -> None:
    """The server process: listen on 127.0.0.1:`port` (0: any free port) until SIGTERM or SIGINT."""
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(launch_line())
    # One pipeline for every client, as a camera has one sensor: a reconnecting client joins it live.
    factory.set_shared(True)

    if drop_every > 0:
        frames = 0

        def drop(_pad: Gst.Pad, _info: Gst.PadProbeInfo) -> Gst.PadProbeReturn:
            nonlocal frames
            frames += 1
            return Gst.PadProbeReturn.DROP if frames % drop_every == 0 else Gst.PadProbeReturn.OK

        def configure(_factory: GstRtspServer.RTSPMediaFactory, media: GstRtspServer.RTSPMedia) -> None:
            gate = media.get_element().get_by_name("gate")
            gate.get_static_pad("src").add_probe(Gst.PadProbeType.BUFFER, drop)

        factory.connect("media-configure", configure)

    server.get_mount_points().add_factory(MOUNT, factory)
    if server.attach(None) == 0:
        sys.exit(f"cannot listen on 127.0.0.1:{port}")
    print(f"ready {server.get_bound_port()}", flush=True)
    loop = GLib.MainLoop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)
    loop.run()


class RtspCamera:
    """The server as a child process of the test: start (any free port the first time, the same port
    after a restart), kill (SIGKILL: a camera that loses power sends no goodbye), stall (SIGSTOP: the
    connection stays up and delivers nothing) and resume."""

    def __init__(self, drop_every: int = 0) -> None:
        self.drop_every = drop_every
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}{MOUNT}"

    def start(self, timeout_s: float = 15.0) -> None:
        if not Path(SYSTEM_PYTHON).exists():
            _fail(f"{SYSTEM_PYTHON} is missing; the RTSP test camera runs on Debian's Python: {INSTALL_HINT}")
        command = [SYSTEM_PYTHON, __file__, "--port", str(self.port), "--drop-every", str(self.drop_every)]
        deadline = time.monotonic() + timeout_s
        while True:
            self.proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            assert self.proc.stdout is not None
            line = self.proc.stdout.readline()
            if line.startswith("ready "):
                self.port = int(line.split()[1])
                return
            _, error = self.proc.communicate(timeout=5)
            if "cannot listen" not in error or time.monotonic() > deadline:
                code = self.proc.returncode
                _fail(f"the RTSP test camera did not start (exit {code}):\n{error}\n{INSTALL_HINT}")
            # The port of a killed server can take a moment to be free again.
            time.sleep(0.2)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stall(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGCONT)
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def _fail(message: str) -> None:
    # pytest only where the tests run: the server side of this file runs on Debian's Python without it.
    import pytest

    pytest.fail(message, pytrace=False)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="An H.264 RTSP test camera on 127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="TCP port for RTSP (0: any free port)")
    parser.add_argument("--drop-every", type=int, default=0, help="drop every Nth frame before encoding")
    arguments = parser.parse_args()
    serve(arguments.port, arguments.drop_every)
