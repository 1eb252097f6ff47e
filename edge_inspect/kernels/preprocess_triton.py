"""One fused Triton kernel for the whole preprocessing of a batch: ROI crop, bilinear resize, colour
conversion and per-channel normalisation in a single pass, writing the (N, C, height, width) model input in
float16 or float32. It computes exactly `inspector.preprocess.preprocess_batch`; `reference_torch` is its
readable spec and owns the host-side layout and tables.

Input layout: `PackedFrames`, frames of their own sizes (mono or BGR, HWC, uint8 or uint16) back to back in
one flat buffer with per-frame offsets, rather than a padded (N, Hmax, Wmax, C) tensor, because
* a line mixes cameras: padding a 0.3 MP frame to the 5 MP one beside it uploads and stores the padding,
  while the packed buffer holds exactly the captured bytes and crosses the bus in one copy;
* frames arrive as separate host buffers anyway, so packing costs the same one gather a padded copy does;
* the kernel addresses a frame only through (origin, row stride), so a per-frame ROI is just another origin,
  and a padded batch would be the special case origin = i * Hmax * Wmax * C, stride = Wmax * C.

Each program computes a BLOCK_H x BLOCK_W tile of output pixels of one frame for all output channels: it
reads the four neighbours' channels once, interpolates in float32 with the host-built coordinate tables,
and writes each channel plane with contiguous stores.

Set TRITON_INTERPRET=1 before importing this module to run the kernel on CPU tensors (slowly).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from edge_inspect.inspector.preprocess import LUMA_BGR, PreprocessRecipe
from edge_inspect.kernels.reference_torch import (
    Frame,
    PackedFrames,
    Roi,
    batch_tables,
    normalisation,
    output_buffer,
    pack_frames,
)

# Whether the kernel below runs in the interpreter: fixed when triton.jit decorates it, at import.
INTERPRETED: bool = bool(triton.knobs.runtime.interpret)

# 64 outputs per row make one 128-byte line of float16 per channel; 8x64 outputs per program give a
# 8x512x512 batch 2048 programs, several waves on any current GPU. To be tuned on the card.
BLOCK_H = 8
BLOCK_W = 64
NUM_WARPS = 4

_COLOUR_CODES = {"rgb": 0, "bgr": 1, "mono": 2}
_RGB = tl.constexpr(0)
_BGR = tl.constexpr(1)
_MONO = tl.constexpr(2)
_LUMA_B = tl.constexpr(float(LUMA_BGR[0]))
_LUMA_G = tl.constexpr(float(LUMA_BGR[1]))
_LUMA_R = tl.constexpr(float(LUMA_BGR[2]))


@triton.jit
def _bilinear(src_ptr, at_lo_lo, at_lo_hi, at_hi_lo, at_hi_hi, wy, wx, mask):
    """One channel at the four neighbours (row lo/hi, column lo/hi): rows first, as resize_bilinear does."""
    lo_lo = tl.load(src_ptr + at_lo_lo, mask=mask, other=0).to(tl.float32)
    lo_hi = tl.load(src_ptr + at_lo_hi, mask=mask, other=0).to(tl.float32)
    hi_lo = tl.load(src_ptr + at_hi_lo, mask=mask, other=0).to(tl.float32)
    hi_hi = tl.load(src_ptr + at_hi_hi, mask=mask, other=0).to(tl.float32)
    left = lo_lo + (hi_lo - lo_lo) * wy
    right = lo_hi + (hi_hi - lo_hi) * wy
    return left + (right - left) * wx


@triton.jit
def _store_normalised(plane_ptr, offsets, value, scale, mean, inv_std, mask):
    normalised = (value * scale - mean) * inv_std
    tl.store(plane_ptr + offsets, normalised.to(plane_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _preprocess_kernel(
    src_ptr,
    origin_ptr,
    row_stride_ptr,
    y_lo_ptr,
    y_hi_ptr,
    y_weight_ptr,
    x_lo_ptr,
    x_hi_ptr,
    x_weight_ptr,
    out_ptr,
    out_height,
    out_width,
    out_batch_stride,
    out_channel_stride,
    scale,
    mean0,
    mean1,
    mean2,
    inv_std0,
    inv_std1,
    inv_std2,
    IN_CHANNELS: tl.constexpr,
    COLOUR: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    frame = tl.program_id(2)
    rows = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    cols = tl.program_id(0) * BLOCK_W + tl.arange(0, BLOCK_W)
    row_ok = rows < out_height
    col_ok = cols < out_width
    mask = row_ok[:, None] & col_ok[None, :]

    # Per-frame tables: masked lanes read index 0, which stays inside the frame.
    y_at = frame * out_height + rows
    x_at = frame * out_width + cols
    y_lo = tl.load(y_lo_ptr + y_at, mask=row_ok, other=0)
    y_hi = tl.load(y_hi_ptr + y_at, mask=row_ok, other=0)
    wy = tl.load(y_weight_ptr + y_at, mask=row_ok, other=0.0)[:, None]
    x_lo = tl.load(x_lo_ptr + x_at, mask=col_ok, other=0)
    x_hi = tl.load(x_hi_ptr + x_at, mask=col_ok, other=0)
    wx = tl.load(x_weight_ptr + x_at, mask=col_ok, other=0.0)[None, :]

    # 64-bit element offsets: a packed batch of large frames passes 2**31 samples.
    origin = tl.load(origin_ptr + frame)
    row_stride = tl.load(row_stride_ptr + frame)
    row_lo = (origin + y_lo.to(tl.int64) * row_stride)[:, None]
    row_hi = (origin + y_hi.to(tl.int64) * row_stride)[:, None]
    col_lo = (x_lo * IN_CHANNELS)[None, :]
    col_hi = (x_hi * IN_CHANNELS)[None, :]
    at_lo_lo = row_lo + col_lo
    at_lo_hi = row_lo + col_hi
    at_hi_lo = row_hi + col_lo
    at_hi_hi = row_hi + col_hi

    if IN_CHANNELS == 1:
        first = _bilinear(src_ptr, at_lo_lo, at_lo_hi, at_hi_lo, at_hi_hi, wy, wx, mask)
        second = first
        third = first
    else:
        blue = _bilinear(src_ptr, at_lo_lo, at_lo_hi, at_hi_lo, at_hi_hi, wy, wx, mask)
        green = _bilinear(src_ptr + 1, at_lo_lo, at_lo_hi, at_hi_lo, at_hi_hi, wy, wx, mask)
        red = _bilinear(src_ptr + 2, at_lo_lo, at_lo_hi, at_hi_lo, at_hi_hi, wy, wx, mask)
        if COLOUR == _RGB:
            first = red
            second = green
            third = blue
        elif COLOUR == _BGR:
            first = blue
            second = green
            third = red
        else:
            first = blue * _LUMA_B + green * _LUMA_G + red * _LUMA_R
            second = first
            third = first

    out_frame_ptr = out_ptr + frame.to(tl.int64) * out_batch_stride
    offsets = rows[:, None] * out_width + cols[None, :]
    _store_normalised(out_frame_ptr, offsets, first, scale, mean0, inv_std0, mask)
    if COLOUR != _MONO:
        second_ptr = out_frame_ptr + out_channel_stride
        _store_normalised(second_ptr, offsets, second, scale, mean1, inv_std1, mask)
        _store_normalised(second_ptr + out_channel_stride, offsets, third, scale, mean2, inv_std2, mask)


def preprocess_batch_triton(
    frames: PackedFrames | Sequence[Frame],
    recipe: PreprocessRecipe,
    out_dtype: torch.dtype | None = None,
    out: torch.Tensor | None = None,
    rois: Sequence[Roi | None] | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """A batch (packed, or frames of their own sizes) to the (N, C, height, width) model input in one launch.

    Same contract as `preprocess_batch_torch`: `out_dtype` float16 or float32 (None: out's dtype, else
    float32), `out` may hold more frames than the batch, `rois` overrides recipe.roi per frame, `device`
    applies only to frames that still need packing.
    """
    packed = frames if isinstance(frames, PackedFrames) else pack_frames(frames, device)
    if not INTERPRETED and packed.device.type != "cuda":
        raise RuntimeError(
            f"the compiled Triton kernel needs CUDA tensors, not {packed.device}: set TRITON_INTERPRET=1 "
            "before importing edge_inspect.kernels.preprocess_triton, or use preprocess_batch_torch"
        )
    result = output_buffer(out, out_dtype, len(packed), recipe, packed.device)
    tables = batch_tables(packed, recipe, rois)
    scale, mean, inv_std = normalisation(recipe, packed.data.dtype)
    if recipe.channels == 1:
        mean, inv_std = mean * 3, inv_std * 3  # the kernel's signature is fixed; mono reads the first
    grid = (triton.cdiv(recipe.width, BLOCK_W), triton.cdiv(recipe.height, BLOCK_H), len(packed))
    # Triton launches on the current device, which need not be the batch's.
    on_device = torch.cuda.device(packed.device) if packed.device.type == "cuda" else contextlib.nullcontext()
    with on_device:
        _preprocess_kernel[grid](
            packed.data,
            tables.origin,
            tables.row_stride,
            tables.y_lo,
            tables.y_hi,
            tables.y_weight,
            tables.x_lo,
            tables.x_hi,
            tables.x_weight,
            result,
            recipe.height,
            recipe.width,
            result.stride(0),
            result.stride(1),
            scale,
            *mean,
            *inv_std,
            IN_CHANNELS=packed.channels,
            COLOUR=_COLOUR_CODES[recipe.colour],
            BLOCK_H=BLOCK_H,
            BLOCK_W=BLOCK_W,
            num_warps=NUM_WARPS,
        )
    return result
