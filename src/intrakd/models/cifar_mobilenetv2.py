"""MobileNetV2 of the CIFAR KD benchmark: width multiplier 0.5, expansion 6, stride-2 stem.

Parameter names and shapes match the benchmark's shared pretrained checkpoints.
"""

from __future__ import annotations

from torch import Tensor, nn

from intrakd.models.contract import Classifier, global_pool
from intrakd.models.layers import init_conv_bn
from intrakd.models.registry import register_model

# (expansion, output channels at width 1, blocks, stride of the first block); expansion None = T
INVERTED_RESIDUAL_STAGES: tuple[tuple[int | None, int, int, int], ...] = (
    (1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2),
    (None, 96, 3, 1), (None, 160, 3, 2), (None, 320, 1, 1),
)


def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class InvertedResidual(nn.Module):
    """1x1 expansion, 3x3 depthwise, linear 1x1 projection; a residual when the shape is kept."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = cin * expansion
        self.residual = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            *_conv_bn_relu(cin, hidden, 1),
            *_conv_bn_relu(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.residual else out


class CifarMobileNetV2(Classifier):
    """Stem, seven inverted-residual stages, a 1x1 conv to 1280 channels, one linear layer."""

    head_name = "classifier"

    def __init__(self, expansion: int = 6, width: float = 0.5, num_classes: int = 100) -> None:
        super().__init__()
        cin = int(32 * width)
        self.conv1 = nn.Sequential(*_conv_bn_relu(3, cin, 3, stride=2))
        blocks = []
        for t, channels, count, stride in INVERTED_RESIDUAL_STAGES:
            cout = int(channels * width)
            stage = []
            for i in range(count):
                stage.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expansion if t is None else t))
                cin = cout
            blocks.append(nn.Sequential(*stage))
        self.blocks = nn.ModuleList(blocks)
        last = int(1280 * width) if width > 1.0 else 1280
        self.conv2 = nn.Sequential(*_conv_bn_relu(cin, last, 1))
        self.classifier = nn.Sequential(nn.Linear(last, num_classes))
        self.num_classes, self.embedding_dim = num_classes, last
        init_conv_bn(self)
        nn.init.normal_(self.classifier[0].weight, 0, 0.01)
        nn.init.zeros_(self.classifier[0].bias)

    def stages(self, x: Tensor) -> list[Tensor]:
        """Stem, then the outputs of blocks 1, 2, 4 and 6 (the benchmark's feature points)."""
        features = [self.conv1(x)]
        out = features[0]
        for i, block in enumerate(self.blocks):
            out = block(out)
            if i in (1, 2, 4, 6):
                features.append(out)
        return features

    def embed(self, last_stage: Tensor) -> Tensor:
        """The 1x1 convolution to 1280 channels (BN-ReLU), then global average pooling."""
        return global_pool(self.conv2(last_stage))


@register_model
def MobileNetV2(num_classes: int = 100) -> CifarMobileNetV2:
    """CIFAR MobileNetV2 (width 0.5, expansion 6) of the KD benchmark."""
    return CifarMobileNetV2(num_classes=num_classes)
