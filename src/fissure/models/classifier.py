"""crack-classifier: a compact residual CNN for N classes (binary by default)."""

from __future__ import annotations

import torch
from torch import nn


class ResidualBlock(nn.Module):
    """Two 3x3 convs with batch norm and an identity (or 1x1 projection) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.shortcut = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class CrackClassifier(nn.Module):
    """Stem (stride 4) then four residual stages that halve resolution and double width.

    ``cam_layer`` is the last convolutional stage, the layer Grad-CAM explains.
    """

    def __init__(self, num_classes: int = 2, width: int = 16, blocks: int = 1, dropout: float = 0.1):
        super().__init__()
        if num_classes < 2:
            raise ValueError("num_classes must be >= 2")
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, 2, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        stages, cin = [], width
        for i in range(4):
            cout = width * 2**i
            layers = [ResidualBlock(cin, cout, stride=1 if i == 0 else 2)]
            layers += [ResidualBlock(cout, cout) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*layers))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.cam_layer = self.stages[-1]
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(cin, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


class EncoderClassifier(nn.Module):
    """A pretrained backbone (:mod:`fissure.models.encoders`): its pooled 1280-wide embedding,
    dropout and a new linear layer for ``num_classes``.

    ``pretrained`` loads the ImageNet weights when the model is built (training starts there);
    loaders of a saved model pass ``pretrained=False``. ``cam_layer`` is the last block (stride 32).
    """

    def __init__(self, num_classes: int = 2, encoder: str = "efficientnet-lite0", pretrained: bool = True,
                 dropout: float = 0.2):
        super().__init__()
        from fissure.models.encoders import build_encoder

        if num_classes < 2:
            raise ValueError("num_classes must be >= 2")
        self.backbone = build_encoder(encoder, pretrained, num_classes=num_classes, dropout=dropout)
        self.cam_layer = self.backbone._blocks[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)
