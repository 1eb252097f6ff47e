"""Frame to model input: the one preprocessing function that training, evaluation and the inspector share.

The recipe travels inside the model package (model.json), so a model is always fed exactly what it
was trained on. Pure numpy with float arithmetic: this is also the reference that the fused GPU
kernel in `edge_inspect.kernels` must reproduce.

Sampling convention (the same as `torch.nn.functional.interpolate(mode="bilinear",
align_corners=False, antialias=False)`): pixel centres at +0.5, source coordinate
`(dst + 0.5) * in / out - 0.5` clamped at 0, neighbours clamped at the far edge, no antialiasing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any, Literal

import numpy as np

ColourMode = Literal["rgb", "bgr", "mono"]
# ITU-R BT.601 luma, the convention OpenCV uses for BGR to grey.
LUMA_BGR = np.array([0.114, 0.587, 0.299], dtype=np.float32)


@dataclass(frozen=True)
class PreprocessRecipe:
    """What a model expects as input. `roi` is (x, y, width, height) in frame pixels, cropped first."""

    height: int
    width: int
    colour: str = "rgb"
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    roi: tuple[int, int, int, int] | None = None
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.colour not in ("rgb", "bgr", "mono"):
            raise ValueError(f"colour mode {self.colour!r} must be rgb, bgr or mono")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"mean and std need {self.channels} values for colour mode {self.colour}")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be positive")
        if self.interpolation != "bilinear":
            raise ValueError("only bilinear interpolation is implemented")

    @property
    def channels(self) -> int:
        return 1 if self.colour == "mono" else 3

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> PreprocessRecipe:
        fields = dict(obj)
        fields["mean"] = tuple(fields["mean"])
        fields["std"] = tuple(fields["std"])
        if fields.get("roi") is not None:
            fields["roi"] = tuple(fields["roi"])
        return cls(**fields)


@lru_cache(maxsize=64)
def source_coords(in_len: int, out_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each output index: the two source indices and the weight of the second (cached, read-only)."""
    scale = in_len / out_len
    src = np.maximum((np.arange(out_len, dtype=np.float64) + 0.5) * scale - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), in_len - 1)
    hi = np.minimum(lo + 1, in_len - 1)
    tables = (lo, hi, (src - lo).astype(np.float32))
    for table in tables:
        table.flags.writeable = False
    return tables


def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of an (H, W, C) array to float32 (height, width, C), separable rows then columns."""
    y0, y1, wy = source_coords(image.shape[0], height)
    x0, x1, wx = source_coords(image.shape[1], width)
    top = image[y0].astype(np.float32)
    rows = top + (image[y1] - top) * wy[:, None, None]
    left = rows[:, x0]
    return left + (rows[:, x1] - left) * wx[None, :, None]


def crop(frame: np.ndarray, roi: tuple[int, int, int, int] | None) -> np.ndarray:
    """A view of the region of interest; a ROI outside the frame is an error, never a silent clip."""
    if roi is None:
        return frame
    x, y, w, h = roi
    if x < 0 or y < 0 or w <= 0 or h <= 0 or x + w > frame.shape[1] or y + h > frame.shape[0]:
        raise ValueError(
            f"ROI {roi} does not fit a {frame.shape[1]}x{frame.shape[0]} frame; fix the recipe's roi"
        )
    return frame[y : y + h, x : x + w]


def colour_planes(image: np.ndarray, colour: str) -> list[np.ndarray]:
    """(H, W, 1) mono or (H, W, 3) BGR float image to one (H, W) plane per model input channel."""
    if image.shape[2] == 1:
        plane = image[:, :, 0]
        return [plane] if colour == "mono" else [plane, plane, plane]
    if colour == "bgr":
        return [image[:, :, 0], image[:, :, 1], image[:, :, 2]]
    if colour == "rgb":
        return [image[:, :, 2], image[:, :, 1], image[:, :, 0]]
    return [image @ LUMA_BGR]


def value_scale(dtype: np.dtype) -> float:
    """Maps the sensor's full range to [0, 1]."""
    return 1.0 / float(np.iinfo(dtype).max)


def _as_hwc(frame: np.ndarray) -> np.ndarray:
    if frame.ndim == 2:
        frame = frame[:, :, None]
    if frame.ndim != 3 or frame.shape[2] not in (1, 3):
        raise ValueError(f"frame shape {frame.shape} is not (H, W), (H, W, 1) or (H, W, 3)")
    return frame


def preprocess_into(frame: np.ndarray, recipe: PreprocessRecipe, out: np.ndarray) -> np.ndarray:
    """Write one frame's model input into `out`, a (C, height, width) float32 array; returns `out`.

    Resizing happens before colour conversion (both are linear, so the order changes nothing but cost:
    a mono frame is resized once, not three times), and (v * scale - mean) / std is applied per plane
    straight into channel-first order.
    """
    resized = resize_bilinear(crop(_as_hwc(frame), recipe.roi), recipe.height, recipe.width)
    scale = value_scale(frame.dtype)
    for channel, (plane, mean, std) in enumerate(
        zip(colour_planes(resized, recipe.colour), recipe.mean, recipe.std, strict=True)
    ):
        np.multiply(plane, np.float32(scale / std), out=out[channel])
        out[channel] -= np.float32(mean / std)
    return out


def preprocess(frame: np.ndarray, recipe: PreprocessRecipe) -> np.ndarray:
    """One (H, W) or (H, W, C) uint8/uint16 frame to a (C, height, width) float32 model input."""
    out = np.empty((recipe.channels, recipe.height, recipe.width), dtype=np.float32)
    return preprocess_into(frame, recipe, out)


def preprocess_batch(
    frames: list[np.ndarray], recipe: PreprocessRecipe, out: np.ndarray | None = None
) -> np.ndarray:
    """A batch of frames (each its own size) to one (N, C, height, width) float32 array."""
    shape = (len(frames), recipe.channels, recipe.height, recipe.width)
    if out is None:
        out = np.empty(shape, dtype=np.float32)
    elif out.shape[0] < len(frames) or out.shape[1:] != shape[1:]:
        raise ValueError(f"output buffer {out.shape} cannot hold a batch of {shape}")
    for i, frame in enumerate(frames):
        preprocess_into(frame, recipe, out[i])
    return out[: len(frames)]
