"""Prepare stage: queues → batch (`batching`) → decode → preprocess, on the host or on the device.

Runs while the infer stage works on the previous batch; hands one prepared batch at a time over the
`InferenceSlot`, whose busy-ness tells the batcher whether to dispatch at once or let the batch grow. A
frame that fails to decode is refused (counted as `malformed`); a batch whose preprocessing raises is
handed on as failed, so its frames become REVIEW results naming the stage.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from edge_inspect.bus.contracts import ContractError
from edge_inspect.inspector.batching import CameraQueues, InferenceSlot
from edge_inspect.inspector.config import BatchingConfig
from edge_inspect.inspector.model_source import ActiveModel
from edge_inspect.inspector.receive import ReceivedFrame
from edge_inspect.inspector.stages.base import Stage, reject
from edge_inspect.logs import log_event

if TYPE_CHECKING:
    import torch

    from edge_inspect.inspector.device.frame_path import DeviceFramePath
    from edge_inspect.sinks.metrics import InspectorMetrics

log = logging.getLogger(__name__)

Rejected = list[tuple[ContractError, ReceivedFrame]]


@dataclass(frozen=True)
class PreparedBatch:
    """A decoded, preprocessed batch waiting for inference, with the model chosen for it. On the device
    path `inputs` is the device tensor, held here until inference has read it."""

    active: ActiveModel
    frames: list[ReceivedFrame]
    images: list[np.ndarray | torch.Tensor | None]
    decode_ms: list[float]
    inputs: np.ndarray | torch.Tensor | None
    preprocess_ms: float
    t_batch_ns: int
    # Set when decoding or preprocessing the batch raised: its frames become REVIEW results naming it.
    failure: str | None = None


def prepare_on_host(
    batch: list[ReceivedFrame], active: ActiveModel, t_batch_ns: int
) -> tuple[PreparedBatch | None, Rejected]:
    """OpenCV decode and numpy preprocessing; None when every frame was refused. Raises when preprocessing
    does."""
    from edge_inspect.inspector.decode import decode
    from edge_inspect.inspector.preprocess import preprocess_batch

    frames, images, decode_ms, rejected = [], [], [], []
    for frame in batch:
        t0 = time.perf_counter()
        try:
            images.append(decode(frame))
        except ContractError as exc:
            rejected.append((exc, frame))
            continue
        frames.append(frame)
        decode_ms.append((time.perf_counter() - t0) * 1e3)
    if not frames:
        return None, rejected
    t0 = time.perf_counter()
    # A fresh buffer per batch: the previous one may still be in use by the infer stage.
    inputs = preprocess_batch(images, active.card.preprocess)
    preprocess_ms = (time.perf_counter() - t0) * 1e3
    return PreparedBatch(active, frames, images, decode_ms, inputs, preprocess_ms, t_batch_ns), rejected


def prepare_on_device(
    device_path: DeviceFramePath, batch: list[ReceivedFrame], active: ActiveModel, t_batch_ns: int
) -> tuple[PreparedBatch | None, Rejected]:
    """The staging ring / nvJPEG and the fused kernel (`device.frame_path`); None when every frame was
    refused."""
    ready, rejected = device_path.prepare(batch, active.card.preprocess, active.model.input_dtype)
    if ready is None:
        return None, rejected
    prepared = PreparedBatch(
        active, ready.frames, ready.images, ready.decode_ms, ready.inputs, ready.preprocess_ms, t_batch_ns
    )
    return prepared, rejected


def failed_batch(batch: list[ReceivedFrame], active: ActiveModel, exc: Exception) -> PreparedBatch:
    """A batch that could not be prepared: every frame of it goes on, to be judged REVIEW."""
    n = len(batch)
    return PreparedBatch(active, batch, [None] * n, [0.0] * n, None, 0.0, time.time_ns(), failure=repr(exc))


class PrepareStage(Stage):
    """Batches from `queues` until the receive stage is done (`receive_done`) and they are empty, then hands
    None on to the infer stage."""

    name = "prepare"

    def __init__(
        self,
        batching: BatchingConfig,
        queues: CameraQueues,
        receive_done: threading.Event,
        active: Callable[[], ActiveModel],
        device_path: DeviceFramePath | None,
        slot: InferenceSlot[PreparedBatch],
        metrics: InspectorMetrics,
    ) -> None:
        super().__init__()
        self._batching = batching
        self._queues = queues
        self._receive_done = receive_done
        self._active = active
        self._device_path = device_path
        self._slot = slot
        self._metrics = metrics

    def run(self) -> None:
        max_batch, max_wait_s = self._batching.max_batch, self._batching.max_wait_ms / 1000
        try:
            while True:
                batch = self._queues.next_batch(max_batch, max_wait_s, inference_busy=self._slot.busy)
                if batch:
                    with self.working():
                        prepared = self.prepare(batch)
                    if prepared is not None:
                        self._slot.put(prepared)
                elif self._receive_done.is_set() and self._queues.total() == 0:
                    return
        finally:
            self._slot.put(None)

    def prepare(self, batch: list[ReceivedFrame]) -> PreparedBatch | None:
        """The batch ready for inference, a failed batch when preparing it raised, None when every frame
        was refused."""
        # One model for the whole batch: a swap takes effect at the next batch, never inside one.
        active = self._active()
        t_batch_ns = time.time_ns()
        try:
            if self._device_path is not None:
                prepared, rejected = prepare_on_device(self._device_path, batch, active, t_batch_ns)
            else:
                prepared, rejected = prepare_on_host(batch, active, t_batch_ns)
        except Exception as exc:  # a failing batch must not stop the line: judge it REVIEW
            log_event(log, logging.ERROR, "preprocess_failed", error=repr(exc), batch=len(batch))
            return failed_batch(batch, active, exc)
        for exc, frame in rejected:
            reject(self._metrics, self.tally, self.rejections, exc, frame.header.camera_id)
        if prepared is not None:
            self._metrics.observe_batch(len(prepared.frames))
        return prepared
