"""Inference stage: an ONNX Runtime session over a verified model package.

Execution providers are chosen from what the machine really has: onnxruntime-gpu lists the CUDA
provider even where no GPU exists, and asking for it there logs errors, so a CUDA device is looked
for first through the driver library itself.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

import numpy as np

from edge_inspect.logs import log_event
from edge_inspect.models.package import ModelPackage

if TYPE_CHECKING:
    import onnxruntime as ort

log = logging.getLogger(__name__)


@cache
def cuda_device_count() -> int:
    """Number of CUDA devices the driver reports; 0 without a driver or a GPU (never raises)."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


def choose_providers(requested: str = "auto") -> list[str]:
    """`auto`: CUDA when a GPU and the CUDA provider both exist, else CPU. `cpu` / `cuda` force one."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if requested == "cpu":
        return ["CPUExecutionProvider"]
    has_cuda = "CUDAExecutionProvider" in available and cuda_device_count() > 0
    if requested == "cuda" and not has_cuda:
        raise RuntimeError(
            "the CUDA execution provider was requested but no usable GPU was found "
            f"(driver devices: {cuda_device_count()}, providers: {available}); use --device auto or cpu"
        )
    if has_cuda:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


@dataclass
class OnnxModel:
    """A loaded model: `run(batch)` maps an (N, C, H, W) float32 batch to the named outputs."""

    package: ModelPackage
    session: object
    input_name: str
    output_names: list[str]

    @property
    def provider(self) -> str:
        return self.session.get_providers()[0]  # type: ignore[attr-defined]

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        outputs = self.session.run(self.output_names, {self.input_name: batch})  # type: ignore[attr-defined]
        return dict(zip(self.output_names, outputs, strict=True))


def session_options(threads: int = 0) -> ort.SessionOptions:
    """The inspector's ONNX Runtime session options; `threads` 0 lets ONNX Runtime choose."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    # Idle intra-op threads otherwise spin on the cores that the receiver, preprocessing and sinks need.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def card_outputs(package: ModelPackage, available: Sequence[str]) -> list[str]:
    """The outputs the card names (score, then the map if any); refuses a graph that lacks one of them."""
    card = package.card
    wanted = [card.score_output] + ([card.map_output] if card.map_output else [])
    missing = [name for name in wanted if name not in available]
    if missing:
        raise RuntimeError(
            f"model {package.path} lacks output(s) {missing} named in its card (it has {list(available)}); "
            "re-export the package"
        )
    return wanted


def load_model(package: ModelPackage, device: str = "auto", threads: int = 0) -> OnnxModel:
    import onnxruntime as ort

    providers = choose_providers(device)
    session = ort.InferenceSession(
        str(package.onnx_path), sess_options=session_options(threads), providers=providers
    )
    card = package.card
    wanted = card_outputs(package, [o.name for o in session.get_outputs()])
    model = OnnxModel(package, session, session.get_inputs()[0].name, wanted)
    log_event(
        log,
        logging.INFO,
        "model_loaded",
        model=card.name,
        version=card.version,
        family=card.family,
        provider=model.provider,
    )
    return model
