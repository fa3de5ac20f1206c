"""Small CNNs sized for the embedded 8x8 digits."""

from __future__ import annotations

from torch import Tensor, nn

from intrakd.models.contract import Classifier
from intrakd.models.registry import register_model


def _conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class DigitsCNN(Classifier):
    """Two conv stages (8x8 -> 4x4), global pooling, a linear classifier."""

    def __init__(self, num_classes: int, width: int, in_channels: int = 1) -> None:
        super().__init__()
        self.num_classes, self.embedding_dim = num_classes, 2 * width
        self.stage1 = nn.Sequential(_conv_bn(in_channels, width), _conv_bn(width, width))
        self.stage2 = nn.Sequential(nn.MaxPool2d(2), _conv_bn(width, 2 * width), _conv_bn(2 * width, 2 * width))
        self.fc = nn.Linear(2 * width, num_classes)

    def stages(self, x: Tensor) -> list[Tensor]:
        s1 = self.stage1(x)
        return [s1, self.stage2(s1)]


@register_model
def digits_cnn_small(num_classes: int = 10, in_channels: int = 1) -> DigitsCNN:
    """Student-sized digits CNN (width 8)."""
    return DigitsCNN(num_classes, width=8, in_channels=in_channels)


@register_model
def digits_cnn(num_classes: int = 10, in_channels: int = 1) -> DigitsCNN:
    """Teacher-sized digits CNN (width 32)."""
    return DigitsCNN(num_classes, width=32, in_channels=in_channels)
