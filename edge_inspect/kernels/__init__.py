"""Fused GPU preprocessing kernels (Triton) and their plain-torch reference.

`preprocess_batch_gpu` runs the fused Triton kernel (`preprocess_triton`) on CUDA batches and the separate-ops
torch path (`reference_torch`) elsewhere, the interpreter included (it is for tests); both compute exactly
`inspector.preprocess.preprocess_batch`. Imports are lazy: the camera side has no torch and still imports
this package.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from edge_inspect.inspector.preprocess import PreprocessRecipe
    from edge_inspect.kernels.reference_torch import Frame, PackedFrames, Roi


def triton_available() -> bool:
    """Whether the fused kernel can run in this process: torch and triton import, and there is a CUDA device
    or the kernel was built for the interpreter (TRITON_INTERPRET=1 when it was first imported)."""
    try:
        import torch

        from edge_inspect.kernels import preprocess_triton
    except ImportError:
        return False
    return preprocess_triton.INTERPRETED or torch.cuda.is_available()


def preprocess_batch_gpu(
    frames: PackedFrames | Sequence[Frame],
    recipe: PreprocessRecipe,
    out_dtype: torch.dtype | None = None,
    out: torch.Tensor | None = None,
    rois: Sequence[Roi | None] | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The (N, C, height, width) model input of a batch, by the fastest implementation for its device.

    Arguments as `reference_torch.preprocess_batch_torch`.
    """
    from edge_inspect.kernels.reference_torch import PackedFrames, pack_frames, preprocess_batch_torch

    packed = frames if isinstance(frames, PackedFrames) else pack_frames(frames, device)
    if packed.device.type == "cuda" and triton_available():
        from edge_inspect.kernels import preprocess_triton

        if not preprocess_triton.INTERPRETED:
            return preprocess_triton.preprocess_batch_triton(packed, recipe, out_dtype, out, rois)
    return preprocess_batch_torch(packed, recipe, out_dtype, out, rois)
