"""The supervised OK/NG classifier: EfficientNet-Lite0 features and one logistic unit.

`forward` returns `score`, shape (N,): the sigmoid probability that the part is defective. That is what
the ONNX graph outputs; training works on `logits` for numerically stable losses.
"""

from __future__ import annotations

import torch
from torch import nn

from edge_inspect.models.efficientnet_lite0 import CONFIG, build_backbone


class DefectClassifier(nn.Module):
    def __init__(self, backbone: nn.Module, dropout: float = 0.2) -> None:
        super().__init__()
        # The ImageNet classifier is dropped: the pooled 1280-d features feed our own head.
        backbone.reset_classifier(0)
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(CONFIG.feature_channels, 1)
        self._frozen: list[nn.Module] = []

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features, (N, 1280)."""
        return self.backbone.global_pool(self.backbone.forward_features(images))

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.embed(images))).squeeze(1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(images))

    def freeze_backbone(self, stages: int | None = None) -> None:
        """Freeze the stem and the first `stages` stages, or the whole backbone when `stages` is None.

        Frozen parts also keep their BatchNorm statistics: `train()` leaves them in eval mode, so small
        fine-tuning batches cannot drift the ImageNet statistics of layers that no longer learn.
        """
        backbone = self.backbone
        if stages is None:
            frozen = [backbone]
        else:
            frozen = [backbone.conv_stem, backbone.bn1, *backbone.blocks[:stages]]
        for module in frozen:
            module.requires_grad_(False)
        self._frozen = frozen
        self.train(self.training)

    def train(self, mode: bool = True) -> DefectClassifier:
        super().train(mode)
        for module in self._frozen:
            module.eval()
        return self


class DihedralAverage(nn.Module):
    """Test-time augmentation inside the graph: the mean score over the 8 flips and rotations of a square.

    EL cells have no preferred orientation, so the 8 views are equally valid images of the same part;
    averaging them steadies the score near the threshold. It costs 8 passes per image, all in one batch.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        flips = [images, images.flip(3), images.flip(2), images.flip(2, 3)]
        views = torch.cat([*flips, *(view.transpose(2, 3) for view in flips)], dim=0)
        return self.model(views).reshape(8, images.shape[0]).mean(dim=0)


def build_classifier(pretrained: bool = True, dropout: float = 0.2) -> DefectClassifier:
    return DefectClassifier(build_backbone(pretrained=pretrained), dropout=dropout)
