"""EfficientNet-Lite0: the explicit key rename, strict loading, ImageNet sanity, intermediate features."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edge_inspect.inspector.preprocess import preprocess
from edge_inspect.models import families
from edge_inspect.models.efficientnet_lite0 import (
    CONFIG,
    FEATURE_LEVELS,
    block_positions,
    build_backbone,
    extract_features,
    rename_key,
    rename_state_dict,
    weights_path,
)

skimage_data = pytest.importorskip("skimage.data")

IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


@pytest.fixture(scope="module")
def backbone() -> torch.nn.Module:
    return build_backbone(pretrained=True).eval()


def test_block_positions_follow_the_stage_repeats() -> None:
    positions = block_positions(CONFIG.stage_repeats)
    assert len(positions) == 16
    assert positions[0] == (0, 0)
    assert positions[1] == (1, 0) and positions[2] == (1, 1)
    assert positions[11] == (5, 0) and positions[14] == (5, 3)
    assert positions[15] == (6, 0)


def test_rename_maps_each_layer_kind() -> None:
    positions = block_positions(CONFIG.stage_repeats)
    assert rename_key("_conv_stem.weight", positions) == "conv_stem.weight"
    assert rename_key("_bn0.running_var", positions) == "bn1.running_var"
    assert rename_key("_blocks.0._project_conv.weight", positions) == "blocks.0.0.conv_pw.weight"
    assert rename_key("_blocks.0._bn2.bias", positions) == "blocks.0.0.bn2.bias"
    assert rename_key("_blocks.4._expand_conv.weight", positions) == "blocks.2.1.conv_pw.weight"
    assert rename_key("_blocks.4._project_conv.weight", positions) == "blocks.2.1.conv_pwl.weight"
    assert rename_key("_blocks.13._bn2.weight", positions) == "blocks.5.2.bn3.weight"
    assert rename_key("_fc.bias", positions) == "classifier.bias"
    with pytest.raises(KeyError, match="block 16 does not exist"):
        rename_key("_blocks.16._bn0.weight", positions)
    with pytest.raises(KeyError, match="not part of an EfficientNet-Lite block"):
        rename_key("_blocks.3._se_reduce.weight", positions)
    with pytest.raises(KeyError, match="not an EfficientNet-Lite0 weight"):
        rename_key("head.weight", positions)


def test_renamed_weights_cover_the_timm_model_exactly(backbone: torch.nn.Module) -> None:
    state = torch.load(weights_path(), map_location="cpu", weights_only=True)
    renamed = rename_state_dict(state)
    assert set(renamed) == set(backbone.state_dict())
    for key, value in renamed.items():
        assert value.shape == backbone.state_dict()[key].shape, key
        assert torch.equal(value, backbone.state_dict()[key]), key


def imagenet_top1(backbone: torch.nn.Module, rgb: np.ndarray) -> int:
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])  # preprocess takes 3-channel frames as a camera sends them
    batch = torch.from_numpy(preprocess(bgr, CONFIG.recipe()))[None]
    with torch.no_grad():
        return int(backbone(batch).argmax(dim=1))


def test_pretrained_network_recognises_imagenet_images(backbone: torch.nn.Module) -> None:
    assert imagenet_top1(backbone, skimage_data.chelsea()) in IMAGENET_CATS
    assert imagenet_top1(backbone, skimage_data.coffee()) == ESPRESSO


def test_recipe_records_what_the_weights_expect() -> None:
    recipe = CONFIG.recipe(96)
    assert (recipe.height, recipe.width, recipe.colour) == (96, 96, "rgb")
    assert recipe.mean == recipe.std == (0.5, 0.5, 0.5)
    assert CONFIG.recipe().height == 224


def test_feature_levels_match_timm_and_have_the_right_shapes(backbone: torch.nn.Module) -> None:
    by_module = {info["module"]: info for info in backbone.feature_info}
    for level in FEATURE_LEVELS.values():
        info = by_module[f"blocks.{level.block}"]
        assert (info["num_chs"], info["reduction"]) == (level.channels, level.stride)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = extract_features(backbone, images, levels=(2, 3, 4))
        everything = extract_features(backbone, images, levels=tuple(FEATURE_LEVELS))
        reference = backbone.forward_features(images)
    assert sorted(features) == [2, 3, 4]
    for level, tensor in features.items():
        spec = FEATURE_LEVELS[level]
        assert tuple(tensor.shape) == (2, spec.channels, 64 // spec.stride, 64 // spec.stride)
    # The deepest level is the last block's output, which the head then widens to 1280 channels.
    head = backbone.bn2(backbone.conv_head(everything[5]))
    assert torch.allclose(head, reference, atol=1e-5)
    with pytest.raises(ValueError, match="do not exist"):
        extract_features(backbone, images, levels=(6,))


def test_registry_names_known_families() -> None:
    assert "classifier" in families.known_families()
    with pytest.raises(
        families.UnknownFamilyError, match=r"unknown model family 'resnet'; known: .*classifier"
    ):
        families.get_family("resnet")
    model = families.build_model("classifier", pretrained=False)
    with torch.no_grad():
        scores = model.eval()(torch.zeros(3, 3, 64, 64))
    assert scores.shape == (3,) and bool(((scores > 0) & (scores < 1)).all())
