"""Feeding images to a PatchCore model in training: preprocessed batches for the memory bank and image
scores in chunks small enough to bound the distance matrix's memory."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from edge_inspect.inspector.preprocess import PreprocessRecipe, preprocess_batch
from edge_inspect.training.train_classifier import run_batches

if TYPE_CHECKING:
    import torch

    from edge_inspect.models.patchcore import PatchCore

FEATURE_BATCH = 32
# Scoring holds an (images x patches x bank) matrix: 8 images of 784 patches (stride 8 at 224 px) against
# a 16k bank is 0.4 GB.
SCORE_BATCH = 8


def preprocessed_batches(
    images: Sequence[np.ndarray], recipe: PreprocessRecipe, batch_size: int
) -> Iterator[torch.Tensor]:
    import torch

    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(preprocess_batch(list(images[start : start + batch_size]), recipe))
        # channels_last roughly halves the depthwise convolutions' time on CPU.
        yield batch.contiguous(memory_format=torch.channels_last)


def image_scores(
    model: PatchCore, images: Sequence[np.ndarray], recipe: PreprocessRecipe, progress: bool
) -> np.ndarray:
    """Image scores from torch, in small chunks to bound the distance matrix's memory."""
    import torch

    def scores(batch: torch.Tensor) -> torch.Tensor:
        return torch.cat([model(part)[0] for part in batch.split(SCORE_BATCH)])

    return run_batches(scores, images, recipe, progress, "score val")
