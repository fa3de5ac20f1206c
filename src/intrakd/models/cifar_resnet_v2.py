"""ResNet18 and ResNet50 of the CIFAR KD benchmark (capitalised names; 3x3 stride-1 stem, no max
pooling, 64-128-256-512 stages), distinct from the ImageNet-size ``imagenet_resnet*`` models.

Parameter names and shapes match the benchmark's shared pretrained checkpoints.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from intrakd.models.contract import Classifier
from intrakd.models.layers import init_conv_bn
from intrakd.models.registry import register_model


def _shortcut(cin: int, cout: int, stride: int) -> nn.Sequential:
    if stride == 1 and cin == cout:
        return nn.Sequential()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))


class Basic(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(cin, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.shortcut = _shortcut(cin, planes * 4, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


class CifarResNetV2(Classifier):
    head_name = "linear"

    def __init__(self, block: type[Basic | Bottleneck], counts: tuple[int, ...], num_classes: int = 100) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cin = 64
        for s, (planes, count) in enumerate(zip((64, 128, 256, 512), counts), start=1):
            layers = []
            for i in range(count):
                layers.append(block(cin, planes, 2 if i == 0 and s > 1 else 1))
                cin = planes * block.expansion
            setattr(self, f"layer{s}", nn.Sequential(*layers))
        self.linear = nn.Linear(cin, num_classes)
        self.num_classes, self.embedding_dim = num_classes, cin
        init_conv_bn(self)

    def stages(self, x: Tensor) -> list[Tensor]:
        features = [F.relu(self.bn1(self.conv1(x)))]
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            features.append(layer(features[-1]))
        return features


@register_model
def ResNet18(num_classes: int = 100) -> CifarResNetV2:
    """CIFAR-style ResNet-18 of the KD benchmark (3x3 stem, no max pooling; not imagenet_resnet18)."""
    return CifarResNetV2(Basic, (2, 2, 2, 2), num_classes)


@register_model
def ResNet50(num_classes: int = 100) -> CifarResNetV2:
    """CIFAR-style ResNet-50 of the KD benchmark (3x3 stem, no max pooling; not imagenet_resnet50)."""
    return CifarResNetV2(Bottleneck, (3, 4, 6, 3), num_classes)
