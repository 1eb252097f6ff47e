"""Device-side runtimes: inference on a batch that is already on the device, outputs left there.

The fused preprocessing kernel (`edge_inspect.kernels.preprocess_batch_gpu`) writes the (N, C, H, W) batch on
the GPU; a runtime reads it there (`DeviceRuntime.run_device`) and `fetch_outputs` copies back only what the
verdict needs: the scores, and the anomaly map rows of NG parts. Two runtimes run the same model.onnx:

* `ort`: ONNX Runtime through IOBinding (`OrtIoBindingRuntime`), on an explicitly ordered CUDA stream;
* `torch`: the graph converted by onnx2torch (`TorchRuntime`), optionally captured as CUDA graphs.

Both also run on the CPU, where the same code paths are tested. The CPU inspector keeps using
`edge_inspect.inspector.infer.load_model`. Needs torch and onnx2torch (the `train` extra).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Literal

from edge_inspect.inspector.infer import choose_providers, cuda_device_count
from edge_inspect.logs import log_event
from edge_inspect.models.package import ModelPackage

if TYPE_CHECKING:
    from edge_inspect.inspector.device.runtimes.base import DeviceRuntime

log = logging.getLogger(__name__)

RuntimeName = Literal["ort", "torch"]
DeviceRequest = Literal["auto", "cpu", "cuda"]
RUNTIMES: tuple[str, ...] = ("ort", "torch")
DEVICE_REQUESTS: tuple[str, ...] = ("auto", "cpu", "cuda")


def pick_device(requested: str, cuda_usable: bool) -> Literal["cpu", "cuda"]:
    """`auto`: CUDA where usable, else the CPU; `cpu` / `cuda` force one (and `cuda` must be usable)."""
    if requested not in DEVICE_REQUESTS:
        raise ValueError(f"device {requested!r} is not one of {DEVICE_REQUESTS}")
    if requested == "cuda" and not cuda_usable:
        raise RuntimeError(
            "a CUDA device was requested but none is usable (driver devices: "
            f"{cuda_device_count()}); use device='auto' or 'cpu'"
        )
    return "cuda" if cuda_usable and requested != "cpu" else "cpu"


def cuda_usable(runtime: str) -> bool:
    """A GPU the driver reports, that torch can use, and for `ort` the CUDA execution provider as well."""
    if cuda_device_count() == 0:
        return False
    import torch

    if not torch.cuda.is_available():
        return False
    return runtime == "torch" or choose_providers("auto")[0] == "CUDAExecutionProvider"


def load_runtime(
    package: ModelPackage,
    runtime: RuntimeName = "ort",
    device: DeviceRequest = "auto",
    cuda_graph: bool = False,
    threads: int = 0,
) -> DeviceRuntime:
    """A device-side runtime for `package`; `threads` sets ONNX Runtime's intra-op threads (`ort` only)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime {runtime!r} is not one of {RUNTIMES}")
    if cuda_graph and runtime != "torch":
        raise ValueError(
            "cuda_graph=True applies to runtime='torch'; use runtime='torch' or cuda_graph=False"
        )
    target = pick_device(device, cuda_usable(runtime))
    loaded: DeviceRuntime
    if runtime == "ort":
        from edge_inspect.inspector.device.runtimes.ort_iobinding import OrtIoBindingRuntime

        loaded = OrtIoBindingRuntime(package, target, threads=threads)
    else:
        from edge_inspect.inspector.device.runtimes.torch_backend import TorchRuntime

        loaded = TorchRuntime(package, target, cuda_graph=cuda_graph)
    card = package.card
    log_event(
        log,
        logging.INFO,
        "runtime_loaded",
        model=card.name,
        version=card.version,
        runtime=runtime,
        device=str(loaded.device),
        cuda_graph=cuda_graph,
    )
    return loaded
