"""PatchCore anomaly detection on frozen EfficientNet-Lite0 features, trained from defect-free images only.

Every image becomes a grid of patch descriptors: backbone features from two levels (stride 16 and 32 by
default), optionally averaged over a neighbourhood, upsampled to the finer grid, concatenated and
reduced by a fixed random projection. The memory bank is a greedy k-center coreset of the descriptors of
good images. A patch's anomaly score is its Euclidean distance to the nearest bank entry; the
patch-score grid is upsampled to the input size and Gaussian-smoothed into the anomaly map, and the
image score is the map's maximum, so map and score share one raw unit and the inspector's pixel
threshold is the image threshold. For mirror-symmetric parts the bank also holds the flipped good
images and the map is the mean of the four mirror views' maps.

Everything in `forward`, the nearest-neighbour search included, is plain tensor algebra (matmul, argmin,
gather, sqrt, resize, convolution) with the bank as a constant, so it exports to one ONNX graph.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from edge_inspect.models.efficientnet_lite0 import CONFIG, FEATURE_LEVELS, build_backbone
from edge_inspect.models.patch_features import (
    GaussianSmoothing,
    anomaly_map,
    check_geometry,
    frozen_trunk,
    stacked_channels,
    stacked_features,
)


@dataclass(frozen=True)
class PatchCoreConfig:
    """Shape of the model. Sizes are in input pixels; `levels` are FEATURE_LEVELS keys (stride 2**level)."""

    input_size: int = CONFIG.input_size
    # Stride 16 and 32. On ELPV (bank from 700 good train cells, random 16k patches, AUROC on 1270
    # other train and val cells) they scored 0.860 against 0.826 for stride 8 + 16, 0.840 for 8 + 16 + 32
    # and 0.763 for 4 + 8, plausibly because cracks and dark regions span many pixels while the grain of
    # poly-crystalline cells makes small patches of good cells look novel. Small defects on regular
    # surfaces may want finer levels: the trainer takes them as an option.
    levels: tuple[int, ...] = (4, 5)
    # Random projection of the concatenated channels (432 for levels 4 and 5); None keeps them all.
    # 128 and 256 directions scored the same on ELPV, and the nearest-neighbour matmul scales with it.
    projection_dim: int | None = 128
    coreset_ratio: float = 0.1
    max_bank_size: int = 16384
    # k-center distances are computed on this many random directions: the selection needs only rough
    # geometry, and the greedy loop's cost is linear in it. On ELPV (stride 8 + 16 features, 200 good
    # images, 15.7k of 157k patches) 16 directions gave val AUROC 0.880 in 16 s, 64 gave 0.883 in 87 s.
    coreset_projection_dim: int = 16
    smoothing_sigma: float = 4.0
    # Each descriptor may be averaged over its n x n neighbourhood on its own level's grid. On ELPV (the
    # development split described at `levels`) 1, not averaging, scored 0.874, 3x3 0.869 and 5x5 0.851:
    # stride-16 and -32 features already see far beyond their cell.
    neighbourhood: int = 1
    # Mirror symmetry: the bank also holds the horizontally, vertically and doubly flipped good images, and
    # the anomaly map is the mean of the four views' maps, each flipped back. Only for parts whose mirror
    # image is itself a good part (EL cells); a mirrored part may be a defect elsewhere.
    flips: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        check_geometry(self.input_size, self.levels, self.smoothing_sigma)
        if not 0.0 < self.coreset_ratio <= 1.0:
            raise ValueError(f"coreset ratio {self.coreset_ratio} must lie in (0, 1]")
        if self.max_bank_size < 1 or self.coreset_projection_dim < 1:
            raise ValueError("max_bank_size and coreset_projection_dim must be positive")
        if self.projection_dim is not None and self.projection_dim < 1:
            raise ValueError(f"projection_dim {self.projection_dim} must be positive, or None for none")
        if self.neighbourhood < 1 or self.neighbourhood % 2 == 0:
            raise ValueError(f"neighbourhood {self.neighbourhood} must be an odd patch count, 1 or more")

    @property
    def backbone_dim(self) -> int:
        return stacked_channels(self.levels)

    @property
    def feature_dim(self) -> int:
        return self.projection_dim or self.backbone_dim

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_size": self.input_size,
            "levels": list(self.levels),
            "strides": [FEATURE_LEVELS[level].stride for level in self.levels],
            "projection_dim": self.projection_dim,
            "coreset_ratio": self.coreset_ratio,
            "max_bank_size": self.max_bank_size,
            "coreset_projection_dim": self.coreset_projection_dim,
            "smoothing_sigma": self.smoothing_sigma,
            "neighbourhood": self.neighbourhood,
            "flips": self.flips,
            "seed": self.seed,
        }


def random_projection(in_dim: int, out_dim: int, seed: int) -> torch.Tensor:
    """A fixed Gaussian (in_dim, out_dim) matrix scaled so that squared lengths are kept on average."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(in_dim, out_dim, generator=generator) / math.sqrt(out_dim)


def coreset_size(n_patches: int, ratio: float, cap: int) -> int:
    return max(1, min(cap, n_patches, round(ratio * n_patches)))


def greedy_coreset(
    points: torch.Tensor, count: int, projection_dim: int, seed: int, progress: bool = False
) -> torch.Tensor:
    """Indices of `count` rows of `points` (P, D) chosen by greedy k-center on a random projection.

    Starting from a seeded random row, each step adds the row farthest from everything chosen so far,
    which bounds the largest distance from any row to its nearest chosen row by twice the optimum.
    Deterministic for a given seed.
    """
    from tqdm import tqdm

    n = points.shape[0]
    if not 1 <= count <= n:
        raise ValueError(f"cannot choose {count} coreset rows from {n} patches")
    projected = points.float()
    if projection_dim < points.shape[1]:
        projected = projected @ random_projection(points.shape[1], projection_dim, seed)
    squared = (projected * projected).sum(dim=1)
    nearest = torch.full((n,), math.inf)
    distance = torch.empty(n)
    chosen = torch.empty(count, dtype=torch.long)
    current = int(torch.randint(n, (1,), generator=torch.Generator().manual_seed(seed)))
    # Bar updates are batched: one step takes well under a millisecond on small inputs.
    step = max(1, count // 200)
    # Each step is a few small dependent kernels; extra threads only add synchronisation, which on a
    # shared CPU stalls every step (measured 10-20x slower with 2 threads beside another job).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with (
            torch.inference_mode(),
            tqdm(total=count, desc="coreset", unit="patch", disable=not progress) as bar,
        ):
            for i in range(count):
                chosen[i] = current
                # ||x - c||² = ||x||² - 2 x.c + ||c||², in place.
                torch.addmv(squared, projected, projected[current], alpha=-2.0, out=distance)
                distance.add_(squared[current])
                torch.minimum(nearest, distance, out=nearest)
                current = int(torch.argmax(nearest))
                if (i + 1) % step == 0 or i + 1 == count:
                    bar.update(i + 1 - bar.n)
    finally:
        torch.set_num_threads(threads)
    return chosen


class PatchCore(nn.Module):
    """`forward(image)` returns (score (N,), anomaly_map (N, H, W)); fit the bank with `fit_memory_bank`."""

    def __init__(self, backbone: nn.Module, config: PatchCoreConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = frozen_trunk(backbone, config.levels)
        self.register_buffer(
            "projection",
            random_projection(config.backbone_dim, config.projection_dim, config.seed)
            if config.projection_dim
            else None,
        )
        self.smoothing = GaussianSmoothing(config.smoothing_sigma)
        dim = config.feature_dim
        self.register_buffer("centre", torch.zeros(dim))
        self.register_buffer("bank", torch.zeros(0, dim))
        self.register_buffer("bank_squared", torch.zeros(0))

    def train(self, mode: bool = True) -> PatchCore:
        # Nothing here learns by gradient; BatchNorm must keep its ImageNet statistics.
        super().train(mode)
        self.backbone.eval()
        return self

    @property
    def fitted(self) -> bool:
        return self.bank.shape[0] > 0

    def patch_features(self, images: torch.Tensor) -> torch.Tensor:
        """Locally aggregated descriptors (N, D, h, w) on the grid of the finest level."""
        descriptors = stacked_features(self.backbone, images, self.config.levels, self.config.neighbourhood)
        if self.projection is not None:
            descriptors = torch.einsum("nchw,cd->ndhw", descriptors, self.projection)
        return descriptors

    def patch_scores(self, images: torch.Tensor) -> torch.Tensor:
        """Distance of every patch to its nearest bank entry, (N, h, w)."""
        if not self.fitted:
            raise RuntimeError(
                "the PatchCore memory bank is empty; call fit_memory_bank() with good images first"
            )
        # Both sides are centred on the bank mean: distances do not change, but the dot products shrink,
        # and with them the float32 cancellation in ||a||² - 2ab + ||b||².
        descriptors = self.patch_features(images) - self.centre[None, :, None, None]
        n, dim, h, w = descriptors.shape
        queries = descriptors.permute(0, 2, 3, 1).reshape(n * h * w, dim)
        # ||a||² is the same for every bank entry, so the neighbour is the argmin of ||b||² - 2ab: one
        # fused matmul-add (Gemm) over the (patches x bank) matrix, the largest tensor in the model.
        partial = torch.addmm(self.bank_squared, queries, self.bank.T, alpha=-2.0)
        # The expanded form's cancellation error, tiny in squared units, is blown up by sqrt near zero
        # (torch and ONNX Runtime then differ by 1e-2 on patches that lie on the bank), so the distance
        # to the neighbour found is computed directly.
        neighbours = self.bank[partial.argmin(dim=1)]
        nearest = (queries - neighbours).square().sum(dim=1).sqrt()
        return nearest.reshape(n, h, w)

    def views(self, images: torch.Tensor) -> torch.Tensor:
        """The batch itself, or with `flips` its four mirror views stacked along the batch axis."""
        if not self.config.flips:
            return images
        return torch.cat([images, images.flip(3), images.flip(2), images.flip(2, 3)])

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        views = self.views(images)
        maps = anomaly_map(self.patch_scores(views), images.shape[-2:], self.smoothing)
        if self.config.flips:
            n = images.shape[0]
            # Each view's map is flipped back onto the part before the views are averaged.
            maps = (
                maps[:n] + maps[n : 2 * n].flip(2) + maps[2 * n : 3 * n].flip(1) + maps[3 * n :].flip(1, 2)
            ) / 4
        return maps.flatten(1).amax(dim=1), maps

    @torch.inference_mode()
    def fit_memory_bank(
        self, batches: Iterable[torch.Tensor], progress: bool = False, total: int | None = None
    ) -> dict[str, Any]:
        """Fill the bank from batches of preprocessed good images (N, C, H, W); returns what it did.

        `total` is the number of batches, for the progress bar only.
        """
        from tqdm import tqdm

        collected = []
        bar = tqdm(batches, desc="features", unit="batch", total=total, disable=not progress, leave=False)
        for batch in bar:
            descriptors = self.patch_features(self.views(batch))
            collected.append(descriptors.permute(0, 2, 3, 1).reshape(-1, descriptors.shape[1]))
        if not collected:
            raise ValueError("no good images to fit the PatchCore memory bank; the training set is empty")
        patches = torch.cat(collected)
        # The ratio applies to the patches of the images themselves: mirror views widen the choice of
        # what to keep, not the bank, whose size sets the cost of every inference.
        views = 4 if self.config.flips else 1
        count = coreset_size(patches.shape[0] // views, self.config.coreset_ratio, self.config.max_bank_size)
        indices = greedy_coreset(
            patches, count, self.config.coreset_projection_dim, self.config.seed, progress=progress
        )
        self.set_memory_bank(patches[indices])
        return {"n_patches": int(patches.shape[0]), "bank_size": count, "feature_dim": int(patches.shape[1])}

    def set_memory_bank(self, bank: torch.Tensor) -> None:
        if bank.ndim != 2 or bank.shape[1] != self.config.feature_dim or bank.shape[0] == 0:
            raise ValueError(
                f"memory bank of shape {tuple(bank.shape)} does not fit: expected "
                f"(M >= 1, {self.config.feature_dim})"
            )
        centre = bank.mean(dim=0)
        centred = (bank - centre).contiguous()
        self.centre = centre
        self.bank = centred
        self.bank_squared = (centred * centred).sum(dim=1)


def build_patchcore(pretrained: bool = True, config: PatchCoreConfig | None = None) -> PatchCore:
    """An unfitted PatchCore on the ImageNet EfficientNet-Lite0 (the registry's builder)."""
    return PatchCore(build_backbone(pretrained=pretrained), config or PatchCoreConfig())
