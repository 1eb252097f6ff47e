"""What every device-side runtime shares: the interface, the input checks and the copy back to the host."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

# The element types a preprocessed batch can have (the Triton kernel writes float16 or float32).
NUMPY_TYPES: dict[torch.dtype, type[np.generic]] = {torch.float32: np.float32, torch.float16: np.float16}


class DeviceRuntime(Protocol):
    """A model that takes its input on a device and leaves its outputs there.

    `run_device(batch)` takes the (N, C, H, W) batch on `device` in `input_dtype` (the preprocessing kernel's
    output) and returns the card's outputs (score, then the map if any) on the same device. The batch must be
    ready on the caller's current CUDA stream (the one the kernel was launched on); the outputs are ready on
    that same stream when `run_device` returns. Outputs may be the runtime's reused buffers: they stay valid
    until the next `run_device` call, so copy what is needed (`fetch_outputs`) before that.
    """

    @property
    def device(self) -> torch.device: ...

    @property
    def input_dtype(self) -> torch.dtype: ...

    def run_device(self, batch: torch.Tensor) -> dict[str, torch.Tensor]: ...


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output: its name, element type and dims (None where the graph leaves one symbolic)."""

    name: str
    dtype: torch.dtype
    dims: tuple[int | None, ...]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def supported_dtype(dtype: torch.dtype | None, what: str) -> torch.dtype:
    if dtype not in NUMPY_TYPES:
        raise ValueError(
            f"{what} is not float32 or float16, the only element types the device runtimes take and return; "
            "re-export the model with float32 (or float16) inputs and outputs, or serve it with load_model"
        )
    return dtype


def normalise_device(device: torch.device | str) -> torch.device:
    """`cuda` becomes `cuda:<current>`, so that it compares equal to the device of the tensors made there."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def check_batch(batch: torch.Tensor, spec: TensorSpec, device: torch.device) -> None:
    """Refuse a batch the model cannot take as it is: converting it here would cost a copy and, for the
    dtype, change the results compared with the model's validated input."""
    if batch.device != device:
        raise ValueError(
            f"the batch is on {batch.device} but this runtime runs on {device}; preprocess onto {device} "
            "(preprocess_batch_gpu(..., device=runtime.device))"
        )
    if batch.dtype != spec.dtype:
        raise TypeError(
            f"the model's input {spec.name!r} is {dtype_name(spec.dtype)} but the batch is "
            f"{dtype_name(batch.dtype)}; preprocess with out_dtype=torch.{dtype_name(spec.dtype)} "
            "(runtime.input_dtype), or export a model that takes the other type"
        )
    fits = batch.ndim == len(spec.dims) and all(
        want is None or want == got for want, got in zip(spec.dims[1:], batch.shape[1:], strict=False)
    )
    if not fits or batch.shape[0] == 0:
        expected = ["N", *("?" if d is None else d for d in spec.dims[1:])]
        raise ValueError(
            f"a batch of shape {tuple(batch.shape)} does not fit the model's input {spec.name!r} of shape "
            f"{expected} (N >= 1); preprocess with the model card's recipe"
        )


def fetch_outputs(
    outputs: Mapping[str, torch.Tensor],
    score_name: str,
    map_name: str | None,
    need_map_rows: Iterable[int],
) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Copy to the host the score vector and, of the map, only the rows in `need_map_rows` (the NG parts).

    The copies are ordered after the runtime's work on the caller's current stream and return host-owned
    arrays: the runtime may overwrite its output buffers on the next run.
    """
    scores = outputs[score_name].detach().to("cpu", copy=True).numpy()
    rows = sorted(set(need_map_rows))
    if map_name is None or not rows:
        return scores, {}
    anomaly_map = outputs[map_name]
    outside = [row for row in rows if not 0 <= row < anomaly_map.shape[0]]
    if outside:
        raise IndexError(f"map rows {outside} requested from a batch of {anomaly_map.shape[0]}")
    # One gather on the device and one transfer, instead of a transfer per row; index_select always makes
    # new memory, so on the CPU the result does not alias the runtime's buffer either.
    index = torch.tensor(rows, dtype=torch.long).to(anomaly_map.device)
    selected = anomaly_map.detach().index_select(0, index).to("cpu").numpy()
    return scores, dict(zip(rows, selected, strict=True))
