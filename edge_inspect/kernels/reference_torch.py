"""Plain-torch batched preprocessing: the readable spec of the fused Triton kernel and the GPU path built from
separate torch ops. It computes exactly `inspector.preprocess.preprocess_batch`, on CPU or CUDA tensors.

Everything host-side that the torch and Triton implementations share lives here:

* `PackedFrames`, the batch layout: frames of their own sizes (HWC, one pixel format per batch) back to back
  in one flat buffer, addressed by per-frame element offsets. A ROI is then only a different origin with the
  same row stride, so nothing is ever cropped by copying.
* `batch_tables`: per frame, the ROI origin, the row stride and the bilinear coordinate tables. The tables
  come from `source_coords` (float64 on the host) and are cached per (input size, output size): device code
  never recomputes coordinates, because float32 coordinates (what `torch.nn.functional.interpolate` uses)
  move samples by up to ~1e-4 after normalisation on noisy frames.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from edge_inspect.inspector.preprocess import LUMA_BGR, PreprocessRecipe, source_coords, value_scale

Roi = tuple[int, int, int, int]
Frame = np.ndarray | torch.Tensor
OUT_DTYPES = (torch.float16, torch.float32)
_SAMPLE_DTYPES = {torch.uint8: np.uint8, torch.uint16: np.uint16}
_TORCH_SAMPLE_DTYPES = {np.dtype(numpy_type): torch_type for torch_type, numpy_type in _SAMPLE_DTYPES.items()}


@dataclass(frozen=True)
class PackedFrames:
    """A batch of HWC frames of any sizes in one flat buffer; frame i starts at element `offsets[i]`.

    The sizes stay on the host because the coordinate tables are built there; the kernels trust them, so
    they are checked against the buffer here.
    """

    data: torch.Tensor
    offsets: tuple[int, ...]
    heights: tuple[int, ...]
    widths: tuple[int, ...]
    channels: int

    def __post_init__(self) -> None:
        if self.data.ndim != 1 or self.data.dtype not in _SAMPLE_DTYPES:
            raise ValueError(
                f"packed data must be a flat uint8 or uint16 tensor, not {self.data.dtype} "
                f"of shape {tuple(self.data.shape)}"
            )
        if self.channels not in (1, 3):
            raise ValueError(f"frames must have 1 (mono) or 3 (BGR) channels, not {self.channels}")
        if not self.offsets or not len(self.offsets) == len(self.heights) == len(self.widths):
            raise ValueError("a packed batch needs one frame at least, each with an offset, height and width")
        for offset, height, width in zip(self.offsets, self.heights, self.widths, strict=True):
            end = offset + height * width * self.channels
            if offset < 0 or height <= 0 or width <= 0 or end > len(self.data):
                raise ValueError(f"a {width}x{height} frame at offset {offset} overruns the packed buffer")

    def __len__(self) -> int:
        return len(self.offsets)

    @property
    def device(self) -> torch.device:
        return self.data.device


@dataclass(frozen=True)
class BatchTables:
    """Per-frame addressing and sampling tables on the batch's device; cached and shared, so read-only."""

    origin: torch.Tensor  # int64 (N,): element offset of the ROI's top-left sample in PackedFrames.data
    row_stride: torch.Tensor  # int64 (N,): elements from one frame row to the next
    y_lo: torch.Tensor  # int32 (N, height): upper source row inside the ROI
    y_hi: torch.Tensor  # int32 (N, height): lower source row
    y_weight: torch.Tensor  # float32 (N, height): weight of the lower row
    x_lo: torch.Tensor  # int32 (N, width): left source column inside the ROI, in pixels
    x_hi: torch.Tensor  # int32 (N, width): right source column
    x_weight: torch.Tensor  # float32 (N, width): weight of the right column


def resolve_device(device: torch.device | str | None, fallback: torch.device) -> torch.device:
    """An explicit device; a bare "cuda" would never compare equal to the "cuda:0" of a tensor."""
    resolved = fallback if device is None else torch.device(device)
    if resolved.type == "cuda" and resolved.index is None:
        resolved = torch.device("cuda", torch.cuda.current_device())
    return resolved


def _as_hwc(frame: Frame) -> Frame:
    if frame.ndim == 2:
        frame = frame[:, :, None]
    if frame.ndim != 3 or frame.shape[2] not in (1, 3):
        raise ValueError(f"frame shape {tuple(frame.shape)} is not (H, W), (H, W, 1) or (H, W, 3)")
    return frame


def _sample_dtype(frame: Frame) -> torch.dtype | None:
    return frame.dtype if isinstance(frame, torch.Tensor) else _TORCH_SAMPLE_DTYPES.get(frame.dtype)


def _device_of(frame: Frame) -> torch.device:
    return frame.device if isinstance(frame, torch.Tensor) else torch.device("cpu")


def pack_frames(frames: Sequence[Frame], device: torch.device | str | None = None) -> PackedFrames:
    """Frames of their own sizes (numpy arrays or tensors, uint8 or uint16) into one buffer on `device`.

    `device` defaults to the first frame's. Frames not already there are gathered into one staging buffer,
    pinned when the target is a GPU, so the batch crosses the bus in a single asynchronous copy.
    """
    if not frames:
        raise ValueError("an empty batch has nothing to pack")
    hwc = [_as_hwc(frame) for frame in frames]
    dtype, channels = _sample_dtype(hwc[0]), hwc[0].shape[2]
    if dtype is None:
        raise ValueError(f"frames must be uint8 or uint16, not {hwc[0].dtype}")
    if any(_sample_dtype(frame) != dtype or frame.shape[2] != channels for frame in hwc):
        raise ValueError("all frames of a batch must share one pixel format (sample type and channel count)")
    target = resolve_device(device, _device_of(hwc[0]))
    on_target = all(_device_of(frame) == target for frame in hwc)
    sizes = [int(np.prod(frame.shape)) for frame in hwc]
    staging = torch.empty(
        sum(sizes),
        dtype=dtype,
        device=target if on_target else torch.device("cpu"),
        pin_memory=not on_target and target.type == "cuda",
    )
    # Numpy frames always land in a host staging buffer; copying them through its numpy view avoids
    # torch.from_numpy, which warns on the read-only buffers cameras and ZeroMQ hand out.
    offsets = tuple(itertools.accumulate(sizes[:-1], initial=0))
    for frame, offset, size in zip(hwc, offsets, sizes, strict=True):
        if isinstance(frame, torch.Tensor):
            staging[offset : offset + size].copy_(frame.reshape(-1))
        else:
            staging.numpy()[offset : offset + size] = frame.reshape(-1)
    return PackedFrames(
        data=staging if on_target else staging.to(target, non_blocking=True),
        offsets=offsets,
        heights=tuple(frame.shape[0] for frame in hwc),
        widths=tuple(frame.shape[1] for frame in hwc),
        channels=channels,
    )


def _frame_rois(
    packed: PackedFrames, recipe: PreprocessRecipe, rois: Sequence[Roi | None] | None
) -> tuple[Roi, ...]:
    """Per-frame ROIs as (x, y, width, height), the whole frame where none is given; never clipped."""
    if rois is None:
        rois = [recipe.roi] * len(packed)
    elif len(rois) != len(packed):
        raise ValueError(f"{len(rois)} ROIs for a batch of {len(packed)} frames")
    resolved = []
    for index, (roi, height, width) in enumerate(zip(rois, packed.heights, packed.widths, strict=True)):
        if roi is None:
            resolved.append((0, 0, width, height))
            continue
        x, y, w, h = (int(v) for v in roi)
        if x < 0 or y < 0 or w <= 0 or h <= 0 or x + w > width or y + h > height:
            raise ValueError(f"ROI {tuple(roi)} does not fit the {width}x{height} frame {index}; fix the roi")
        resolved.append((x, y, w, h))
    return tuple(resolved)


@functools.lru_cache(maxsize=256)
def _axis_table(in_len: int, out_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lo, hi, weight = source_coords(in_len, out_len)
    return lo.astype(np.int32), hi.astype(np.int32), weight


@functools.lru_cache(maxsize=64)
def _cached_tables(
    offsets: tuple[int, ...],
    widths: tuple[int, ...],
    channels: int,
    rois: tuple[Roi, ...],
    out_height: int,
    out_width: int,
    device: torch.device,
) -> BatchTables:
    # A production line repeats the same batch layout, so after the first batch this is a dictionary lookup
    # and no host-to-device copy.
    rows = [_axis_table(h, out_height) for _, _, _, h in rois]
    cols = [_axis_table(w, out_width) for _, _, w, _ in rois]

    def stacked(tables: list[tuple[np.ndarray, ...]], part: int) -> torch.Tensor:
        return torch.from_numpy(np.stack([table[part] for table in tables])).to(device)

    origins = [
        offset + (y * width + x) * channels
        for offset, width, (x, y, _, _) in zip(offsets, widths, rois, strict=True)
    ]
    return BatchTables(
        origin=torch.tensor(origins, dtype=torch.int64).to(device),
        row_stride=torch.tensor([w * channels for w in widths], dtype=torch.int64).to(device),
        y_lo=stacked(rows, 0),
        y_hi=stacked(rows, 1),
        y_weight=stacked(rows, 2),
        x_lo=stacked(cols, 0),
        x_hi=stacked(cols, 1),
        x_weight=stacked(cols, 2),
    )


def batch_tables(
    packed: PackedFrames, recipe: PreprocessRecipe, rois: Sequence[Roi | None] | None = None
) -> BatchTables:
    """The cached addressing and coordinate tables of a batch; `rois` (one per frame) overrides recipe.roi."""
    return _cached_tables(
        packed.offsets,
        packed.widths,
        packed.channels,
        _frame_rois(packed, recipe, rois),
        recipe.height,
        recipe.width,
        packed.device,
    )


def normalisation(
    recipe: PreprocessRecipe, sample_dtype: torch.dtype
) -> tuple[float, list[float], list[float]]:
    """Value scale, per-channel mean and 1/std, rounded to float32 exactly as the numpy reference does."""
    scale = np.float32(value_scale(np.dtype(_SAMPLE_DTYPES[sample_dtype])))
    mean = np.asarray(recipe.mean, dtype=np.float32)
    inv_std = 1.0 / np.asarray(recipe.std, dtype=np.float32)
    return float(scale), [float(m) for m in mean], [float(s) for s in inv_std]


def output_buffer(
    out: torch.Tensor | None,
    out_dtype: torch.dtype | None,
    count: int,
    recipe: PreprocessRecipe,
    device: torch.device,
) -> torch.Tensor:
    """The (count, C, height, width) result: `out[:count]` when given (it may hold more), else a new tensor.

    `out_dtype` None means out's dtype, or float32 without `out`.
    """
    shape = (count, recipe.channels, recipe.height, recipe.width)
    if out is None:
        dtype = torch.float32 if out_dtype is None else out_dtype
        if dtype not in OUT_DTYPES:
            raise ValueError(f"output dtype must be float16 or float32, not {dtype}")
        return torch.empty(shape, dtype=dtype, device=device)
    if out.dtype not in OUT_DTYPES or (out_dtype is not None and out.dtype != out_dtype):
        raise ValueError(f"output buffer dtype {out.dtype} is not the requested float16/float32 {out_dtype}")
    if out.ndim != 4 or out.shape[0] < count or tuple(out.shape[1:]) != shape[1:]:
        raise ValueError(f"output buffer {tuple(out.shape)} cannot hold a batch of {shape}")
    if out.device != device or not out.is_contiguous():
        raise ValueError(f"output buffer must be a contiguous tensor on {device}")
    return out[:count]


def _gather(data: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    if data.dtype == torch.uint16:
        # torch covers uint16 with few kernels on some devices; gathering the same bits as int16 needs none.
        return data.view(torch.int16)[index].to(torch.int32).bitwise_and(0xFFFF).to(torch.float32)
    return data[index].to(torch.float32)


def _convert_colour(image: torch.Tensor, colour: str) -> torch.Tensor:
    """(..., 1) mono or (..., 3) BGR float samples to the model's colour mode, like convert_colour."""
    if image.shape[-1] == 1:
        return image if colour == "mono" else image.expand(*image.shape[:-1], 3)
    if colour == "bgr":
        return image
    if colour == "rgb":
        return image.flip(-1)
    blue, green, red = image.unbind(-1)
    luma = blue * float(LUMA_BGR[0]) + green * float(LUMA_BGR[1]) + red * float(LUMA_BGR[2])
    return luma.unsqueeze(-1)


def preprocess_batch_torch(
    frames: PackedFrames | Sequence[Frame],
    recipe: PreprocessRecipe,
    out_dtype: torch.dtype | None = None,
    out: torch.Tensor | None = None,
    rois: Sequence[Roi | None] | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """A batch (packed, or frames of their own sizes) to the (N, C, height, width) model input.

    `rois` gives one ROI (or None for the whole frame) per frame instead of recipe.roi; `device` applies
    only to frames that still need packing.
    """
    packed = frames if isinstance(frames, PackedFrames) else pack_frames(frames, device)
    result = output_buffer(out, out_dtype, len(packed), recipe, packed.device)
    tables = batch_tables(packed, recipe, rois)
    channel = torch.arange(packed.channels, device=packed.device)
    # Element offsets of every output pixel's four neighbours, split into a per-row and a per-column part.
    row_lo = tables.origin[:, None] + tables.y_lo.long() * tables.row_stride[:, None]
    row_hi = tables.origin[:, None] + tables.y_hi.long() * tables.row_stride[:, None]
    col_lo = tables.x_lo.long() * packed.channels
    col_hi = tables.x_hi.long() * packed.channels

    def sample(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        return _gather(packed.data, rows[:, :, None, None] + cols[:, None, :, None] + channel)

    # Rows first, then columns, in the same float32 operations as resize_bilinear.
    wy = tables.y_weight[:, :, None, None]
    left = sample(row_lo, col_lo)
    left = left + (sample(row_hi, col_lo) - left) * wy
    right = sample(row_lo, col_hi)
    right = right + (sample(row_hi, col_hi) - right) * wy
    resized = left + (right - left) * tables.x_weight[:, None, :, None]

    coloured = _convert_colour(resized, recipe.colour)
    scale, mean, inv_std = normalisation(recipe, packed.data.dtype)
    # Scalar constants per channel keep the work free of host-to-device copies.
    for index in range(recipe.channels):
        result[:, index].copy_((coloured[..., index] * scale - mean[index]) * inv_std[index])
    return result
