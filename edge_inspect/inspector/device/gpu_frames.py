"""The host side of the GPU frame path: batched JPEG decoding on the device and pinned staging of raw frames.

`decode_jpeg_batch` decodes a batch of JPEG payloads with torchvision (nvJPEG on a CUDA device, libjpeg on
the CPU) into (H, W, C) BGR tensors, rejecting only the frames that are corrupt or disagree with their
header. `PinnedStaging` copies raw frames from ZeroMQ into a ring of reusable host buffers and on to the
device asynchronously, so that the copy of one batch overlaps the preprocessing and inference of the one
before. Both hand over what `edge_inspect.kernels.preprocess_batch_gpu` takes.

torch is imported inside the functions: the camera side has no torch and may still import this module.
"""

from __future__ import annotations

import functools
import itertools
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from edge_inspect.bus.contracts import ContractError, FrameHeader
from edge_inspect.inspector.decode import corrupt_jpeg, shape_mismatch

if TYPE_CHECKING:
    import torch

    from edge_inspect.kernels.reference_torch import PackedFrames

DEFAULT_SLOTS = 3
SAMPLE_DTYPES: tuple[np.dtype, ...] = (np.dtype(np.uint8), np.dtype(np.uint16))
# Host buffers grow in whole MiB: a line repeats one batch layout, and a batch a few bytes larger than
# the last should not cost a fresh pinned allocation.
_GROWTH_BYTES = 1 << 20
# Held from the decode stream's synchronisation to its last conversion kernel: another thread's kernels
# queued in between would make the stream busy again when the decode starts.
_DECODE_LOCK = threading.Lock()


# -- JPEG decoding ------------------------------------------------------------------------------------


def check_decoded(image: torch.Tensor, header: FrameHeader) -> torch.Tensor | ContractError:
    """The decoded (H, W, C) image, or the shape_mismatch it is when it disagrees with its header."""
    return shape_mismatch(header, tuple(image.shape), str(image.dtype).removeprefix("torch.")) or image


def to_hwc_bgr(decoded: torch.Tensor) -> torch.Tensor:
    """torchvision's (C, H, W) RGB or grey to the (H, W, C) BGR or grey layout of every frame here."""
    if decoded.shape[0] == 3:
        decoded = decoded.flip(0)
    return decoded.permute(1, 2, 0).contiguous()


def encoded_tensor(payload: bytes | memoryview) -> torch.Tensor:
    """A payload as the 1-D uint8 CPU tensor torchvision decodes from.

    Copied, not wrapped: ZeroMQ's buffers are read-only, torch warns on every such wrap, and a compressed
    frame is small next to its decoded pixels.
    """
    import torch

    source = np.frombuffer(payload, dtype=np.uint8)
    encoded = torch.empty(len(source), dtype=torch.uint8)
    encoded.numpy()[:] = source
    return encoded


@functools.cache
def _decode_stream(device: torch.device) -> torch.cuda.Stream:
    import torch

    return torch.cuda.Stream(device)


def _decode(encoded: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """One torchvision call for the whole list; raises RuntimeError when any payload fails to decode."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    if device.type != "cuda":
        return [to_hwc_bgr(image) for image in decode_jpeg(encoded, ImageReadMode.UNCHANGED, device)]
    # torchvision allocates its outputs on the current stream, and nvJPEG's hardware engine may write them
    # before work already queued there has run, so a block just freed on that stream could still be read.
    # The decoder therefore gets a stream of its own that is idle whenever a decode starts.
    stream = _decode_stream(device)
    with _DECODE_LOCK, torch.cuda.stream(stream):
        stream.synchronize()
        return [to_hwc_bgr(image) for image in decode_jpeg(encoded, ImageReadMode.UNCHANGED, device)]


def _decode_each(encoded: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """Frame by frame, None for each payload that fails: how a failed batch finds its bad frames."""
    import torch

    decoded: list[torch.Tensor | None] = []
    for payload in encoded:
        try:
            decoded.extend(_decode([payload], device))
        except (torch.OutOfMemoryError, torch.AcceleratorError):
            # The device failed, not the payload: that is no frame's fault.
            raise
        except RuntimeError:
            decoded.append(None)
    return decoded


def _hand_over(images: Sequence[torch.Tensor | ContractError], device: torch.device) -> None:
    """Order the decode stream's work before the caller's stream and keep the memory from being reused
    while the caller's stream still has work queued on it."""
    import torch

    caller = torch.cuda.current_stream(device)
    caller.wait_stream(_decode_stream(device))
    for image in images:
        if not isinstance(image, ContractError):
            image.record_stream(caller)


def decode_jpeg_batch(
    payloads: Sequence[bytes | memoryview],
    headers: Sequence[FrameHeader],
    device: torch.device | str,
) -> list[torch.Tensor | ContractError]:
    """Decode JPEG payloads in one batched call on `device`: per frame an (H, W, C) uint8 BGR (or grey)
    tensor there, or the ContractError (corrupt_jpeg, shape_mismatch) that rejects that frame alone.

    On a CUDA device the tensors are ready for work queued on the stream current at the call. The
    inspector decodes with OpenCV on the CPU; the CPU device here is what the tests compare with it.
    """
    import torch

    from edge_inspect.kernels.reference_torch import resolve_device

    if len(payloads) != len(headers):
        raise ValueError(f"{len(payloads)} JPEG payloads but {len(headers)} headers; pass one header each")
    if not payloads:
        return []
    target = resolve_device(device, torch.device("cpu"))
    encoded = [encoded_tensor(payload) for payload in payloads]
    try:
        decoded: list[torch.Tensor | None] = list(_decode(encoded, target))
    except (torch.OutOfMemoryError, torch.AcceleratorError):
        raise
    except RuntimeError:
        # torchvision returns nothing when one payload of a batch fails; only that one is to be rejected.
        decoded = _decode_each(encoded, target)
    results = [
        corrupt_jpeg(header) if image is None else check_decoded(image, header)
        for image, header in zip(decoded, headers, strict=True)
    ]
    if target.type == "cuda":
        _hand_over(results, target)
    return results


# -- pinned staging of raw frames ---------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class BatchLayout:
    """Where each frame of a batch lies in the flat staging buffer, in samples (not bytes)."""

    frames: tuple[np.ndarray, ...]  # (H, W, C) views of the frames, in batch order
    offsets: tuple[int, ...]
    dtype: np.dtype
    channels: int

    @property
    def nbytes(self) -> int:
        return sum(frame.nbytes for frame in self.frames)


def batch_layout(frames: Sequence[np.ndarray]) -> BatchLayout:
    """Check that frames share one pixel format and lay them out back to back; raises ValueError."""
    if not frames:
        raise ValueError("an empty batch has nothing to upload")
    hwc = tuple(frame[:, :, None] if frame.ndim == 2 else frame for frame in frames)
    first = hwc[0]
    for index, frame in enumerate(hwc):
        if frame.ndim != 3 or frame.shape[2] not in (1, 3) or frame.dtype not in SAMPLE_DTYPES:
            raise ValueError(
                f"frame {index} is {frame.shape} {frame.dtype}; frames must be (H, W), (H, W, 1) "
                "or (H, W, 3) uint8 or uint16"
            )
        if frame.dtype != first.dtype or frame.shape[2] != first.shape[2]:
            raise ValueError(
                f"frame {index} is {frame.shape[2]}-channel {frame.dtype} but frame 0 is "
                f"{first.shape[2]}-channel {first.dtype}; batch frames of one pixel format"
            )
    offsets = tuple(itertools.accumulate((frame.size for frame in hwc[:-1]), initial=0))
    return BatchLayout(hwc, offsets, first.dtype, first.shape[2])


def fill(buffer: np.ndarray, layout: BatchLayout) -> None:
    """Copy the frames into the front of a flat uint8 buffer: the one host-side copy of their pixels."""
    position = 0
    for frame in layout.frames:
        # reshape gives a view of a contiguous frame and a contiguous copy of a strided one.
        flat = frame.reshape(-1).view(np.uint8)
        buffer[position : position + len(flat)] = flat
        position += len(flat)


def grown_capacity(capacity: int, needed: int) -> int:
    return capacity if needed <= capacity else -(-needed // _GROWTH_BYTES) * _GROWTH_BYTES


@dataclass
class StagingSlot:
    """One reusable host buffer and the event of the last copy that read it (None before the first)."""

    host: torch.Tensor
    copied: torch.cuda.Event | None = None


class PinnedStaging:
    """Raw frames to the device through a ring of reusable host buffers (page-locked for a CUDA device).

    Ordering, per batch k in slot k % slots:
      1. the host waits for the event of the copy that last read the slot (batch k - slots), so a buffer
         is never overwritten while the DMA engine may still be reading it; with 2-3 slots that copy
         finished long ago and the wait costs nothing;
      2. the frames are copied into the slot (the one CPU copy), growing it when the batch is larger;
      3. on a dedicated copy stream the slot goes to a fresh device tensor (non_blocking) and an event is
         recorded after it: that event guards the slot (rule 1) and is what consumers wait on;
      4. the consuming stream waits on the event (the host does not) and the device tensor is marked as
         used by that stream, so its memory is not recycled while work queued there may still read it.
    So the copy of batch k+1 runs while batch k is preprocessed and inferred, and a batch stays valid for
    as long as it is referenced, whatever later batches do to the ring. For the CPU device the buffers
    are plain memory and step 3 is a copy into a fresh tensor, so the ring logic runs there too.

    Not thread-safe: one thread (the inspector's prepare thread) uploads.
    """

    def __init__(self, device: torch.device | str, slots: int = DEFAULT_SLOTS) -> None:
        import torch

        from edge_inspect.kernels.reference_torch import resolve_device

        if slots < 1:
            raise ValueError(f"a staging ring needs one slot at least, not {slots}; 2-3 overlap copies")
        self.device = resolve_device(device, torch.device("cpu"))
        self.slots = [StagingSlot(torch.empty(0, dtype=torch.uint8)) for _ in range(slots)]
        self._copy_stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self._uploads = 0

    def _take_slot(self, nbytes: int) -> StagingSlot:
        import torch

        slot = self.slots[self._uploads % len(self.slots)]
        self._uploads += 1
        if slot.copied is not None:
            slot.copied.synchronize()
        capacity = grown_capacity(len(slot.host), nbytes)
        if capacity != len(slot.host):
            slot.host = torch.empty(capacity, dtype=torch.uint8, pin_memory=self._copy_stream is not None)
        return slot

    def _transfer(
        self, slot: StagingSlot, nbytes: int, stream: torch.cuda.Stream | None
    ) -> tuple[torch.Tensor, torch.cuda.Event | None]:
        import torch

        staged = slot.host[:nbytes]
        if self._copy_stream is None:
            return staged.clone(), None
        consumer = torch.cuda.current_stream(self.device) if stream is None else stream
        with torch.cuda.stream(self._copy_stream):
            data = staged.to(self.device, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record(self._copy_stream)
        slot.copied = ready
        consumer.wait_event(ready)
        data.record_stream(consumer)
        return data, ready

    def upload_batch(
        self, frames: Sequence[np.ndarray], stream: torch.cuda.Stream | None = None
    ) -> tuple[PackedFrames, torch.cuda.Event | None]:
        """Frames of any sizes (one pixel format) as a PackedFrames on the device, for preprocess_batch_gpu.

        `stream` is the stream that will use the batch (the current one by default); it already waits for
        the copy. The returned event (None on the CPU) marks the copy's end, for work on other streams.
        """
        import torch

        from edge_inspect.kernels.reference_torch import PackedFrames

        layout = batch_layout(frames)
        nbytes = layout.nbytes
        slot = self._take_slot(nbytes)
        fill(slot.host.numpy(), layout)
        data, ready = self._transfer(slot, nbytes, stream)
        sample = torch.uint16 if layout.dtype == np.uint16 else torch.uint8
        packed = PackedFrames(
            data=data.view(sample),
            offsets=layout.offsets,
            heights=tuple(frame.shape[0] for frame in layout.frames),
            widths=tuple(frame.shape[1] for frame in layout.frames),
            channels=layout.channels,
        )
        return packed, ready
