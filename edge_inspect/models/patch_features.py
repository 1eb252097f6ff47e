"""What the good-only families share: a frozen, truncated EfficientNet-Lite0, its features stacked on one
grid, and the Gaussian smoothing that turns a coarse patch-score grid into an anomaly map.

Plain tensor algebra throughout, so everything here exports to ONNX inside the family's graph.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from edge_inspect.models.efficientnet_lite0 import FEATURE_LEVELS, extract_features

if TYPE_CHECKING:
    from timm.models.efficientnet import EfficientNet


def frozen_trunk(backbone: EfficientNet, levels: Sequence[int]) -> EfficientNet:
    """`backbone` cut after the deepest of `levels`, frozen and in eval mode.

    Blocks past the deepest level and the ImageNet head never run: dropping them keeps the module and its
    state small. BatchNorm keeps its ImageNet statistics.
    """
    last_block = max(FEATURE_LEVELS[level].block for level in levels)
    backbone.blocks = backbone.blocks[: last_block + 1]
    for name in ("conv_head", "bn2", "global_pool", "classifier"):
        setattr(backbone, name, nn.Identity())
    backbone.requires_grad_(False)
    return backbone.eval()


def stacked_features(
    backbone: EfficientNet, images: torch.Tensor, levels: Sequence[int], neighbourhood: int = 1
) -> torch.Tensor:
    """The levels' features (N, sum of channels, h, w) on the grid of the finest level, each optionally
    averaged over its n x n neighbourhood on its own grid first."""
    features = extract_features(backbone, images, levels)
    grid = features[min(levels)].shape[-2:]
    parts = []
    for level in levels:
        pooled = features[level]
        if neighbourhood > 1:
            # count_include_pad=False: border patches are averaged over real neighbours, not zeros, so the
            # image edge does not look anomalous.
            pooled = F.avg_pool2d(
                pooled, neighbourhood, stride=1, padding=neighbourhood // 2, count_include_pad=False
            )
        if pooled.shape[-2:] != grid:
            pooled = F.interpolate(pooled, size=grid, mode="bilinear", align_corners=False)
        parts.append(pooled)
    return torch.cat(parts, dim=1)


def check_geometry(input_size: int, levels: Sequence[int], smoothing_sigma: float) -> None:
    """Raise ValueError unless the levels exist and the input is large enough for their grid and for the
    smoothing kernel."""
    unknown = sorted(set(levels) - FEATURE_LEVELS.keys())
    if not levels or unknown:
        raise ValueError(
            f"feature levels {list(levels)} must be a non-empty subset of {sorted(FEATURE_LEVELS)}"
        )
    if smoothing_sigma <= 0:
        raise ValueError(f"smoothing sigma {smoothing_sigma} px must be positive")
    stride = FEATURE_LEVELS[max(levels)].stride
    kernel = 2 * smoothing_radius(smoothing_sigma) + 1
    if input_size < max(2 * stride, kernel):
        raise ValueError(
            f"input size {input_size} px is too small for stride-{stride} features and a {kernel} px "
            "smoothing kernel; use a larger input or a smaller sigma"
        )


def stacked_channels(levels: Sequence[int]) -> int:
    return sum(FEATURE_LEVELS[level].channels for level in levels)


def gaussian_kernel(sigma: float, radius: int) -> torch.Tensor:
    """Normalised 1-D Gaussian weights, length 2 * radius + 1."""
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return (weights / weights.sum()).float()


def smoothing_radius(sigma: float) -> int:
    # Gaussian weight beyond 3 sigma is below 0.3 %: a wider kernel only costs time.
    return math.ceil(3.0 * sigma)


class GaussianSmoothing(nn.Module):
    """Separable Gaussian blur of (N, 1, H, W) maps, mirrored at the borders."""

    def __init__(self, sigma: float) -> None:
        super().__init__()
        self.radius = smoothing_radius(sigma)
        kernel = gaussian_kernel(sigma, self.radius)
        self.register_buffer("kernel_rows", kernel.view(1, 1, -1, 1))
        self.register_buffer("kernel_cols", kernel.view(1, 1, 1, -1))

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        r = self.radius
        padded = F.pad(maps, (r, r, r, r), mode="reflect")
        return F.conv2d(F.conv2d(padded, self.kernel_rows), self.kernel_cols)


def anomaly_map(
    patch_scores: torch.Tensor, size: tuple[int, int], smoothing: GaussianSmoothing
) -> torch.Tensor:
    """A (N, h, w) patch-score grid upsampled to the input size and smoothed: (N, H, W)."""
    upsampled = F.interpolate(patch_scores.unsqueeze(1), size=size, mode="bilinear", align_corners=False)
    return smoothing(upsampled).squeeze(1)
