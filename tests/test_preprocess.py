"""The shared preprocessing function against an independent torch reference on random inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edge_inspect.inspector.preprocess import (
    PreprocessRecipe,
    crop,
    preprocess,
    preprocess_batch,
    source_coords,
)

MEAN3, STD3 = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def torch_reference(frame: np.ndarray, recipe: PreprocessRecipe) -> np.ndarray:
    """Written independently of the implementation: torch's own bilinear resize and colour maths."""
    image = torch.from_numpy(crop(frame, recipe.roi).astype(np.float32)).permute(2, 0, 1)[None]
    resized = torch.nn.functional.interpolate(
        image.double(), size=(recipe.height, recipe.width), mode="bilinear", align_corners=False
    )[0]
    if resized.shape[0] == 1 and recipe.colour != "mono":
        resized = resized.repeat(3, 1, 1)
    elif resized.shape[0] == 3 and recipe.colour == "rgb":
        resized = resized.flip(0)
    elif resized.shape[0] == 3 and recipe.colour == "mono":
        resized = (resized * torch.tensor([0.114, 0.587, 0.299], dtype=torch.float64)[:, None, None]).sum(0)[
            None
        ]
    scaled = resized / np.iinfo(frame.dtype).max
    mean = torch.tensor(recipe.mean, dtype=torch.float64)[:, None, None]
    std = torch.tensor(recipe.std, dtype=torch.float64)[:, None, None]
    return ((scaled - mean) / std).numpy()


@pytest.mark.parametrize("seed", range(12))
def test_matches_torch_reference_on_random_frames(seed: int) -> None:
    rng = np.random.default_rng(seed)
    h, w = rng.integers(8, 200, size=2)
    channels = int(rng.choice([1, 3]))
    dtype = rng.choice([np.uint8, np.uint16])
    frame = rng.integers(1, np.iinfo(dtype).max, size=(h, w, channels), dtype=dtype)
    colour = str(rng.choice(["rgb", "bgr", "mono"]))
    n = 1 if colour == "mono" else 3
    roi = None
    if rng.random() < 0.5:
        x, y = rng.integers(0, w // 2), rng.integers(0, h // 2)
        roi = (int(x), int(y), int(rng.integers(1, w - x + 1)), int(rng.integers(1, h - y + 1)))
    recipe = PreprocessRecipe(
        int(rng.integers(4, 160)), int(rng.integers(4, 160)), colour, MEAN3[:n], STD3[:n], roi
    )
    out = preprocess(frame, recipe)
    assert out.dtype == np.float32 and out.shape == (n, recipe.height, recipe.width)
    # torch resamples with float32 source coordinates (ours are float64), so a small slack is needed.
    np.testing.assert_allclose(out, torch_reference(frame, recipe), atol=5e-4, rtol=0)


def test_identity_size_is_exact_and_2d_frames_are_accepted() -> None:
    frame = np.arange(20 * 30, dtype=np.uint8).reshape(20, 30)
    out = preprocess(frame, PreprocessRecipe(20, 30, "mono", (0.0,), (1.0,)))
    np.testing.assert_allclose(out[0], frame / 255.0, atol=1e-7)


def test_source_coords_follow_half_pixel_convention() -> None:
    lo, hi, w = source_coords(4, 2)
    assert lo.tolist() == [0, 2] and hi.tolist() == [1, 3]
    np.testing.assert_allclose(w, [0.5, 0.5])
    lo, hi, w = source_coords(2, 4)  # upscaling clamps at both edges
    assert lo.tolist() == [0, 0, 0, 1] and hi.tolist() == [1, 1, 1, 1]
    np.testing.assert_allclose(w, [0.0, 0.25, 0.75, 0.25])  # both neighbours are the edge pixel


def test_batch_of_different_sizes_and_buffer_reuse() -> None:
    rng = np.random.default_rng(0)
    frames = [
        rng.integers(1, 255, size=(h, w, 1), dtype=np.uint8) for h, w in ((50, 60), (300, 300), (17, 9))
    ]
    recipe = PreprocessRecipe(32, 32)
    buffer = np.full((8, 3, 32, 32), np.nan, dtype=np.float32)
    batch = preprocess_batch(frames, recipe, out=buffer)
    assert batch.shape == (3, 3, 32, 32) and np.shares_memory(batch, buffer)
    for i, frame in enumerate(frames):
        np.testing.assert_array_equal(batch[i], preprocess(frame, recipe))
    with pytest.raises(ValueError, match="cannot hold"):
        preprocess_batch(frames, recipe, out=np.empty((2, 3, 32, 32), dtype=np.float32))


def test_bad_recipes_and_rois_fail_clearly() -> None:
    with pytest.raises(ValueError, match="mean and std"):
        PreprocessRecipe(8, 8, "rgb", (0.5,), (0.5,))
    with pytest.raises(ValueError, match="does not fit"):
        preprocess(np.ones((10, 10), np.uint8), PreprocessRecipe(4, 4, roi=(5, 5, 6, 6)))
    recipe = PreprocessRecipe(8, 8, roi=(1, 2, 3, 4))
    assert PreprocessRecipe.from_dict(recipe.to_dict()) == recipe
