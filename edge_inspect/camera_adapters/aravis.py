"""GigE Vision (and, by device id, USB3 Vision) cameras through Aravis, from Python by PyGObject.

A camera is opened by its address (`AravisSettings.address`): the device is created directly from the
address, with no discovery packet on any network. Opening by `device_id` (an Aravis id or serial number)
asks Aravis to discover cameras, which broadcasts on every network interface: use it on the camera network
only. Each frame carries the camera's own frame id and timestamp; lost or incomplete buffers and gaps in the
frame ids count as underruns, and a camera that disappears is reopened with backoff (`RecoveringStream`).

`gi` is imported when a source is created, so the gateway and every other command run without it.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from edge_inspect.camera_adapters.base import SourceError
from edge_inspect.camera_adapters.genicam import (
    DeviceLost,
    GenICamSettings,
    Grab,
    RecoveringStream,
    check_convertible,
    check_in_range,
    to_image,
)

GVCP_PORT = 3956
# GigE Vision bootstrap register "Control Channel Privilege": its two low bits say whether we still hold
# (exclusive) control. A camera that rebooted answers the read but has forgotten us.
CONTROL_CHANNEL_PRIVILEGE = 0x0A00
PRIVILEGE_HELD = 0b11


@dataclass(frozen=True)
class AravisSettings:
    """One Aravis camera: `address` (IP address or host name of a GigE Vision camera, opened without
    discovery) or `device_id` (Aravis device id or serial number; discovery broadcasts on every interface).

    `packet_size`: GigE Vision stream packet size in bytes (GevSCPSPacketSize; None keeps the camera's; on a
    network with jumbo frames use up to the MTU, 9000; on loopback 8192 cuts the packets per frame sixfold).
    `socket_buffer_bytes`: the stream socket's receive buffer (None: Aravis sizes it to one frame)."""

    address: str | None = None
    device_id: str | None = None
    camera: GenICamSettings = field(default_factory=GenICamSettings)
    packet_size: int | None = None
    socket_buffer_bytes: int | None = None

    def __post_init__(self) -> None:
        if (self.address is None) == (self.device_id is None):
            raise ValueError(
                "give the camera's address (IP or host name, opened directly) or its device_id (needs "
                "discovery), exactly one of them"
            )
        if self.packet_size is not None and not 576 <= self.packet_size <= 16384:
            raise ValueError(
                f"packet_size={self.packet_size} must lie in 576..16384 bytes (9000 for jumbo frames)"
            )
        if self.socket_buffer_bytes is not None and not 65536 <= self.socket_buffer_bytes <= 1 << 30:
            raise ValueError(f"socket_buffer_bytes={self.socket_buffer_bytes} must lie in 64 KiB..1 GiB")

    @property
    def name(self) -> str:
        return self.address if self.address is not None else f"id:{self.device_id}"


def load_aravis() -> tuple[ModuleType, ModuleType, type[Exception]]:
    """(Aravis, Gio, GLib.Error), imported on first use."""
    try:
        import gi

        gi.require_version("Aravis", "0.8")
        from gi.repository import Aravis, Gio, GLib
    except (ImportError, ValueError) as exc:
        raise SourceError(
            f"Aravis is not usable from this Python ({exc}); `make peers` installs Debian's "
            "gir1.2-aravis-0.8 and PyGObject into the virtual environment"
        ) from exc
    return Aravis, Gio, GLib.Error


def interface_address(camera_ip: str) -> str:
    """The local address the kernel routes to `camera_ip` from: where the camera must send its stream.
    Connecting a UDP socket only chooses a route; nothing is sent."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((camera_ip, GVCP_PORT))
        return str(probe.getsockname()[0])


def resolve_ipv4(address: str) -> str:
    try:
        return str(socket.getaddrinfo(address, GVCP_PORT, socket.AF_INET, socket.SOCK_DGRAM)[0][4][0])
    except OSError as exc:
        raise SourceError(f"camera address {address!r} does not resolve to an IPv4 address ({exc})") from exc


class AravisSession:
    """An opened, configured and acquiring Aravis camera with its stream and queued buffers."""

    def __init__(self, settings: AravisSettings) -> None:
        self.settings = settings
        self._aravis, gio, self._error = load_aravis()
        self._camera: Any = None
        self._stream: Any = None
        try:
            self._camera = self._open(gio)
            self._pixel_format = self._configure()
            self._stream = self._start()
        except self._error as exc:
            self._fail(exc)
        except SourceError:
            self.close()
            raise

    def _open(self, gio: ModuleType) -> Any:
        if self.settings.address is None:
            return self._aravis.Camera.new(self.settings.device_id)
        camera_ip = resolve_ipv4(self.settings.address)
        local = gio.InetAddress.new_from_string(interface_address(camera_ip))
        device = self._aravis.GvDevice.new(local, gio.InetAddress.new_from_string(camera_ip))
        return self._aravis.Camera.new_with_device(device)

    def _fail(self, exc: Exception) -> None:
        """A GenICam error while opening: the device is gone (retry later) or refuses the settings (fatal)."""
        reachable = self._camera is not None and self.responsive()
        self.close()
        if reachable:
            raise SourceError(
                f"camera {self.settings.name} refused its settings: {exc.args[0] if exc.args else exc}"
            )
        raise DeviceLost(
            f"cannot open camera {self.settings.name} ({exc.args[0] if exc.args else exc}): check that it is "
            "powered, that its address is right and reachable, and that no other program controls it"
        ) from exc

    def _configure(self) -> str:
        """Apply the settings in the order cameras need them; the pixel format actually streamed."""
        camera, wanted = self._camera, self.settings.camera
        available = list(camera.dup_available_pixel_formats_as_strings())
        if wanted.pixel_format is not None:
            if wanted.pixel_format not in available:
                raise SourceError(
                    f"camera {self.settings.name} has no pixel format {wanted.pixel_format}; "
                    f"it offers {available}"
                )
            camera.set_pixel_format_from_string(wanted.pixel_format)
        pixel_format = str(camera.get_pixel_format_as_string())
        check_convertible(self.settings.name, pixel_format, available)
        if wanted.roi is not None:
            self._set_region()
        if wanted.frame_rate is not None:
            self._check_bounds("frame_rate", wanted.frame_rate, camera.get_frame_rate_bounds())
            camera.set_frame_rate(wanted.frame_rate)
        if wanted.exposure_us is not None:
            self._check_bounds("exposure_us", wanted.exposure_us, camera.get_exposure_time_bounds())
            if camera.is_exposure_auto_available():
                camera.set_exposure_time_auto(self._aravis.Auto.OFF)
            camera.set_exposure_time(wanted.exposure_us)
        if wanted.gain is not None:
            self._check_bounds("gain", wanted.gain, camera.get_gain_bounds())
            if camera.is_gain_auto_available():
                camera.set_gain_auto(self._aravis.Auto.OFF)
            camera.set_gain(wanted.gain)
        self._set_trigger()
        if camera.is_gv_device() and self.settings.packet_size is not None:
            camera.gv_set_packet_size(self.settings.packet_size)
        return pixel_format

    def _set_region(self) -> None:
        roi = self.settings.camera.roi
        assert roi is not None
        sensor = self._camera.get_sensor_size()
        if roi.x + roi.width > sensor.width or roi.y + roi.height > sensor.height:
            raise SourceError(
                f"ROI {roi} does not fit camera {self.settings.name}'s {sensor.width}x{sensor.height} sensor"
            )
        self._camera.set_region(roi.x, roi.y, roi.width, roi.height)
        got = self._camera.get_region()
        if (got.x, got.y, got.width, got.height) != (roi.x, roi.y, roi.width, roi.height):
            raise SourceError(
                f"camera {self.settings.name} set ROI x={got.x} y={got.y} {got.width}x{got.height} "
                f"instead of {roi}: choose offsets and sizes on its increments (width step "
                f"{self._camera.get_width_increment()}, height step {self._camera.get_height_increment()})"
            )

    def _check_bounds(self, name: str, value: float, bounds: Any) -> None:
        check_in_range(self.settings.name, name, value, bounds.min, bounds.max)

    def _set_trigger(self) -> None:
        camera, wanted = self._camera, self.settings.camera
        if wanted.trigger == "free":
            camera.clear_triggers()
            camera.set_acquisition_mode(self._aravis.AcquisitionMode.CONTINUOUS)
            return
        if wanted.trigger == "software" and not camera.is_software_trigger_supported():
            raise SourceError(
                f"camera {self.settings.name} has no software trigger; use trigger 'free' or 'line'"
            )
        source = "Software" if wanted.trigger == "software" else wanted.trigger_source
        sources = list(camera.dup_available_trigger_sources())
        if source not in sources:
            raise SourceError(
                f"camera {self.settings.name} has no trigger source {source!r}; it offers {sources}"
            )
        camera.set_trigger(source)

    def _start(self) -> Any:
        stream = self._camera.create_stream(None, None)
        if self._camera.is_gv_device():
            socket_buffer = self._aravis.GvStreamSocketBuffer
            if self.settings.socket_buffer_bytes is None:
                stream.set_property("socket-buffer", socket_buffer.AUTO)
            else:
                stream.set_property("socket-buffer", socket_buffer.FIXED)
                stream.set_property("socket-buffer-size", self.settings.socket_buffer_bytes)
        payload = self._camera.get_payload()
        for _ in range(self.settings.camera.buffers):
            stream.push_buffer(self._aravis.Buffer.new_allocate(payload))
        self._camera.start_acquisition()
        return stream

    def grab(self, timeout_s: float) -> Grab | None:
        buffer = self._stream.timeout_pop_buffer(max(1, int(timeout_s * 1e6)))
        if buffer is None:
            return None
        try:
            if buffer.get_status() != self._aravis.BufferStatus.SUCCESS:
                return Grab(None, None, None)
            # GigE Vision never uses block id 0 nor timestamp 0 for a real frame: 0 means unknown.
            frame_id = int(buffer.get_frame_id()) or None
            t_source_ns = int(buffer.get_timestamp()) or None
            padding_x, _ = buffer.get_image_padding()
            try:
                image = to_image(
                    buffer.get_image_data(),
                    buffer.get_image_width(),
                    buffer.get_image_height(),
                    self._pixel_format,
                    padding_x,
                )
            except ValueError as exc:
                raise SourceError(f"camera {self.settings.name}: {exc}") from exc
            return Grab(image, frame_id, t_source_ns)
        finally:
            self._stream.push_buffer(buffer)

    def trigger(self) -> None:
        try:
            self._camera.software_trigger()
        except self._error as exc:
            raise DeviceLost(f"software trigger failed: {exc.args[0] if exc.args else exc}") from exc

    def responsive(self) -> bool:
        try:
            if self._camera.is_gv_device():
                value = self._camera.get_device().read_register(CONTROL_CHANNEL_PRIVILEGE)
                return bool(value & PRIVILEGE_HELD)
            self._camera.get_integer("Width")
            return True
        except self._error:
            return False

    def close(self) -> None:
        """Stop acquiring and give control back, so that the camera is free for the next session at once."""
        camera, self._camera, self._stream = self._camera, None, None
        if camera is None:
            return
        try:
            camera.stop_acquisition()
            if camera.is_gv_device():
                camera.get_device().leave_control()
        except self._error:
            pass  # the device is gone: nothing to release on its side


class AravisSource(RecoveringStream):
    """Frames from an Aravis camera (`AravisSettings`), reopened whenever it is lost; `health` counts the
    device's reconnects, underruns and stale events. Opened at construction; iterate once, or close it."""

    def __init__(self, settings: AravisSettings, should_stop: Callable[[], bool] | None = None) -> None:
        self.settings = settings
        super().__init__(settings.name, lambda: AravisSession(settings), settings.camera, should_stop)
