"""CIFAR ResNets of the standard KD benchmark (resnet8 ... resnet110, resnet8x4, resnet32x4).

Parameter names and shapes match the widely shared pretrained checkpoints of that benchmark.
"""

from __future__ import annotations

from functools import partial

from torch import Tensor, nn

from intrakd.models.contract import Classifier
from intrakd.models.layers import init_conv_bn
from intrakd.models.registry import register_variant


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + residual)


class CifarResNet(Classifier):
    """ResNet for 32x32 inputs: a 3x3 stem and three stages of ``(depth - 2) / 6`` basic blocks."""

    def __init__(self, depth: int, widths: tuple[int, int, int, int], num_classes: int = 100) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"depth must be 6n + 2, got {depth}")
        blocks = (depth - 2) // 6
        self.num_classes, self.embedding_dim = num_classes, widths[3]
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(widths[1], blocks)
        self.layer2 = self._make_layer(widths[2], blocks, stride=2)
        self.layer3 = self._make_layer(widths[3], blocks, stride=2)
        self.fc = nn.Linear(widths[3], num_classes)
        init_conv_bn(self)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def stages(self, x: Tensor) -> list[Tensor]:
        stem = self.relu(self.bn1(self.conv1(x)))
        f1 = self.layer1(stem)
        f2 = self.layer2(f1)
        return [stem, f1, f2, self.layer3(f2)]


for _name, _depth, _widths in (*((f"resnet{d}", d, (16, 16, 32, 64)) for d in (8, 14, 20, 32, 44, 56, 110)),
                               ("resnet8x4", 8, (32, 64, 128, 256)), ("resnet32x4", 32, (32, 64, 128, 256))):
    register_variant(_name, partial(CifarResNet, _depth, _widths), f"CIFAR {_name}: depth {_depth}, widths {_widths}.")
