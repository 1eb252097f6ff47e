"""Cameras through their vendor's GenTL producer (a `.cti` file), driven by harvesters.

The camera's features are set by their GenICam (SFNC) names: PixelFormat, ExposureTime, Gain,
AcquisitionFrameRate, Width/Height/OffsetX/OffsetY, TriggerSelector/TriggerMode/TriggerSource and
TriggerSoftware. A feature the settings leave unset is not touched; one they set that the camera lacks is
refused before streaming starts. Recovery is `RecoveringStream`'s: a device that fails is released, the
producer unloaded, and everything reopened with backoff, so a camera that came back under a new handle is
found again. Which network traffic the producer's device enumeration sends is the producer's own: GigE Vision
producers broadcast a discovery on their interfaces.

harvesters and genicam are imported when a source is created, so the gateway runs without them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
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
from edge_inspect.logs import log_event

logger = logging.getLogger(__name__)

# Older cameras name these features by the pre-SFNC 2.0 names; the first one the camera has is used.
EXPOSURE_NODES = ("ExposureTime", "ExposureTimeAbs")
FRAME_RATE_NODES = ("AcquisitionFrameRate", "AcquisitionFrameRateAbs")


@dataclass(frozen=True)
class GenTLSettings:
    """A camera behind the GenTL producer `cti`: the one with `serial_number` or `device_id` (the producer's
    device id), or the producer's only camera when neither is given."""

    cti: Path
    serial_number: str | None = None
    device_id: str | None = None
    camera: GenICamSettings = field(default_factory=GenICamSettings)

    def __post_init__(self) -> None:
        if not str(self.cti).endswith(".cti"):
            raise ValueError(f"cti {self.cti} must be a GenTL producer file (*.cti) from the camera vendor")

    @property
    def name(self) -> str:
        which = self.serial_number or self.device_id or "only device"
        return f"{Path(self.cti).name}:{which}"


def load_harvesters() -> tuple[Any, Any, tuple[type[Exception], ...]]:
    """(Harvester, ImageAcquirer, the GenTL and GenApi exception bases), imported on first use."""
    try:
        from genicam import genapi, gentl
        from harvesters.core import Harvester, ImageAcquirer
    except ImportError as exc:
        raise SourceError(
            f"harvesters is not installed ({exc}); `make peers` installs it with the camera extra"
        ) from exc
    return Harvester, ImageAcquirer, (gentl.GenericException, genapi.GenericException)


class GenTLSession:
    """The producer loaded, the camera opened, configured and acquiring."""

    def __init__(self, settings: GenTLSettings) -> None:
        self.settings = settings
        harvester_type, acquirer_type, self._errors = load_harvesters()
        if not Path(settings.cti).is_file():
            raise SourceError(
                f"GenTL producer {settings.cti} does not exist; install the vendor's GenTL package"
            )
        self._harvester: Any = harvester_type()
        self._acquirer: Any = None
        self._incomplete = 0
        try:
            self._harvester.add_file(str(settings.cti), check_validity=True)
            self._harvester.update()
            self._acquirer = self._harvester.create(self._search_key())
            self._nodes = self._acquirer.remote_device.node_map
            self._configure()
            self._acquirer.num_buffers = settings.camera.buffers
            self._acquirer.add_callback(acquirer_type.Events.INCOMPLETE_BUFFER, self._count_incomplete)
            self._acquirer.start()
        except (*self._errors, ValueError, OSError) as exc:
            reachable = self._acquirer is not None and self.responsive()
            self.close()
            if reachable:
                raise SourceError(f"camera {settings.name} refused its settings: {exc}") from exc
            raise DeviceLost(
                f"cannot open camera {settings.name} through {settings.cti} ({exc!r}): check that it is "
                "connected and powered and that no other program holds it"
            ) from exc
        except BaseException:
            # Refused settings, a camera not listed: the producer is unloaded all the same, or the next
            # session would find it still initialised and list no cameras.
            self.close()
            raise

    def _search_key(self) -> dict[str, str] | int:
        devices = self._harvester.device_info_list
        if self.settings.serial_number is not None:
            wanted = {"serial_number": self.settings.serial_number}
        elif self.settings.device_id is not None:
            wanted = {"id_": self.settings.device_id}
        elif len(devices) == 1:
            return 0
        else:
            found = [(d.id_, d.serial_number) for d in devices]
            raise SourceError(
                f"{self.settings.cti} offers {len(devices)} cameras {found}: "
                "choose one by serial_number or device_id"
            )
        if not any(all(getattr(d, key) == value for key, value in wanted.items()) for d in devices):
            # Not a settings error: a camera that is off or unplugged is not listed either.
            raise DeviceLost(
                f"no camera {wanted} behind {self.settings.cti}; it offers {len(devices)} others"
            )
        return wanted

    def _count_incomplete(self) -> None:
        self._incomplete += 1

    def _node(self, *names: str, required_for: str | None = None) -> Any:
        """The first of `names` that the camera has; None, or a SourceError when `required_for` is said."""
        for name in names:
            if self._nodes.has_node(name):
                return getattr(self._nodes, name)
        if required_for is not None:
            raise SourceError(
                f"camera {self.settings.name} has no {'/'.join(names)} feature, needed for {required_for}; "
                "leave that setting unset for this camera"
            )
        return None

    def _set_number(self, value: float, *names: str, setting: str) -> None:
        self._set_bounded(self._node(*names, required_for=setting), value, setting)

    def _set_bounded(self, node: Any, value: float, setting: str) -> None:
        check_in_range(self.settings.name, setting, value, node.min, node.max)
        node.value = value

    def _set_enum(self, node: Any, value: str, setting: str) -> None:
        offered = list(node.symbolics)
        if value not in offered:
            raise SourceError(f"camera {self.settings.name} has no {setting} {value!r}; it offers {offered}")
        node.value = value

    def _configure(self) -> None:
        wanted = self.settings.camera
        pixel_format = self._node("PixelFormat", required_for="pixel_format")
        if wanted.pixel_format is not None:
            self._set_enum(pixel_format, wanted.pixel_format, "pixel format")
        check_convertible(self.settings.name, pixel_format.value, pixel_format.symbolics)
        if wanted.roi is not None:
            self._set_region()
        if wanted.frame_rate is not None:
            enable = self._node("AcquisitionFrameRateEnable")
            if enable is not None:
                enable.value = True
            self._set_number(wanted.frame_rate, *FRAME_RATE_NODES, setting="frame_rate")
        if wanted.exposure_us is not None:
            self._auto_off("ExposureAuto")
            self._set_number(wanted.exposure_us, *EXPOSURE_NODES, setting="exposure_us")
        if wanted.gain is not None:
            self._auto_off("GainAuto")
            self._set_number(wanted.gain, "Gain", setting="gain")
        self._set_trigger()

    def _auto_off(self, name: str) -> None:
        node = self._node(name)
        if node is not None:
            node.value = "Off"

    def _set_region(self) -> None:
        roi = self.settings.camera.roi
        assert roi is not None
        offsets = [
            self._node(name, required_for="an ROI offset" if at else None)
            for name, at in (("OffsetX", roi.x), ("OffsetY", roi.y))
        ]
        # Offsets first to 0, so that the new size fits whatever the old offsets were.
        for node in offsets:
            if node is not None:
                node.value = 0
        self._set_number(roi.width, "Width", setting="ROI width")
        self._set_number(roi.height, "Height", setting="ROI height")
        for node, value, setting in zip(offsets, (roi.x, roi.y), ("ROI x", "ROI y"), strict=True):
            if node is not None:
                self._set_bounded(node, value, setting)

    def _set_trigger(self) -> None:
        wanted = self.settings.camera
        mode = self._node("TriggerMode", required_for=None if wanted.trigger == "free" else "a trigger")
        if mode is None:
            return  # a free-running camera without trigger features
        selector = self._node("TriggerSelector")
        if selector is not None and "FrameStart" in selector.symbolics:
            selector.value = "FrameStart"
        if wanted.trigger == "free":
            mode.value = "Off"
            return
        source = "Software" if wanted.trigger == "software" else wanted.trigger_source
        self._set_enum(self._node("TriggerSource", required_for="a trigger"), source, "trigger source")
        if wanted.trigger == "software":
            self._node("TriggerSoftware", required_for="the software trigger")
        mode.value = "On"

    def grab(self, timeout_s: float) -> Grab | None:
        incomplete_before = self._incomplete
        try:
            buffer = self._acquirer.try_fetch(timeout=timeout_s)
        except self._errors as exc:
            raise DeviceLost(f"fetching a buffer failed: {exc!r}") from exc
        if buffer is None:
            # harvesters requeues an incomplete buffer itself and tells only through the callback.
            return Grab(None, None, None) if self._incomplete > incomplete_before else None
        with buffer:
            component = buffer.payload.components[0]
            try:
                image = to_image(
                    component.data,
                    component.width,
                    component.height,
                    component.data_format,
                    component.x_padding,
                )
            except ValueError as exc:
                raise SourceError(f"camera {self.settings.name}: {exc}") from exc
            return Grab(image, self._frame_id(buffer), self._timestamp_ns(buffer))

    def _frame_id(self, buffer: Any) -> int | None:
        try:
            return int(buffer.module.frame_id)
        except self._errors:
            return None  # the producer does not number frames

    def _timestamp_ns(self, buffer: Any) -> int | None:
        """The device's timestamp in ns: the producer's own, or its ticks at the device's tick frequency;
        None when it reports neither (harvesters' `Buffer.timestamp` would make that 0)."""
        module = buffer.module
        try:
            return int(module.timestamp_ns) or None
        except self._errors:
            pass
        try:
            ticks, frequency = int(module.timestamp), int(module.parent.parent.timestamp_frequency)
        except self._errors:
            return None
        return ticks * 1_000_000_000 // frequency if ticks > 0 and frequency > 0 else None

    def trigger(self) -> None:
        try:
            self._nodes.TriggerSoftware.execute()
        except self._errors as exc:
            raise DeviceLost(f"software trigger failed: {exc!r}") from exc

    def responsive(self) -> bool:
        """Reads Width from the device itself (its cached value invalidated first)."""
        try:
            width = self._acquirer.remote_device.node_map.Width
            width.node.invalidate_node()
            return int(width.value) > 0
        except (*self._errors, AttributeError):
            return False

    def close(self) -> None:
        """Stop, release the device and unload the producer; a device already gone raises nothing here."""
        acquirer, self._acquirer = self._acquirer, None
        if acquirer is not None:
            for release in (acquirer.stop, acquirer.destroy):
                try:
                    release()
                except self._errors as exc:
                    log_event(
                        logger,
                        logging.DEBUG,
                        "gentl_release_failed",
                        camera=self.settings.name,
                        error=repr(exc),
                    )
        self._harvester.reset()


class GenTLSource(RecoveringStream):
    """Frames from a camera behind a GenTL producer (`GenTLSettings`), reopened whenever it is lost; `health`
    counts the device's reconnects, underruns and stale events. Opened at construction; iterate once, or
    close it."""

    def __init__(self, settings: GenTLSettings, should_stop: Callable[[], bool] | None = None) -> None:
        self.settings = settings
        super().__init__(settings.name, lambda: GenTLSession(settings), settings.camera, should_stop)
