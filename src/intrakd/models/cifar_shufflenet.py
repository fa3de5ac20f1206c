"""ShuffleNetV1 (groups 3) and ShuffleNetV2 (1x) of the CIFAR KD benchmark: ShuffleV1, ShuffleV2.

Both use a 1x1 stem without down-sampling, so a 32x32 input reaches the last stage at 4x4.
Parameter names and shapes match the benchmark's shared pretrained checkpoints.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from intrakd.models.contract import Classifier, global_pool
from intrakd.models.layers import channel_shuffle, init_conv_bn
from intrakd.models.registry import register_model


class ShuffleV1Block(nn.Module):
    """Grouped 1x1, channel shuffle, 3x3 depthwise, grouped 1x1. Down-sampling blocks concatenate an
    average-pooled copy of the input (their own output is ``cout - cin`` channels wide)."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int) -> None:
        super().__init__()
        mid = cout // 4
        # the first block reads the 24-channel stem, too narrow to split into groups
        self.first_groups = 1 if cin == 24 else groups
        self.stride = stride
        self.conv1 = nn.Conv2d(cin, mid, 1, groups=self.first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)

    def forward(self, x: Tensor) -> Tensor:
        out = channel_shuffle(F.relu(self.bn1(self.conv1(x))), self.first_groups)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.stride == 2:
            return F.relu(torch.cat([out, F.avg_pool2d(x, 3, stride=2, padding=1)], 1))
        return F.relu(out + x)


class ShuffleNetV1(Classifier):
    head_name = "linear"

    def __init__(self, widths: tuple[int, ...], blocks: tuple[int, ...], groups: int, num_classes: int = 100) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        cin = 24
        for s, (width, count) in enumerate(zip(widths, blocks), start=1):
            layers = []
            for i in range(count):
                layers.append(ShuffleV1Block(cin, width - cin if i == 0 else width, 2 if i == 0 else 1, groups))
                cin = width
            setattr(self, f"layer{s}", nn.Sequential(*layers))
        self.linear = nn.Linear(cin, num_classes)
        self.num_classes, self.embedding_dim = num_classes, cin
        init_conv_bn(self)

    def stages(self, x: Tensor) -> list[Tensor]:
        stem = F.relu(self.bn1(self.conv1(x)))
        f1 = self.layer1(stem)
        f2 = self.layer2(f1)
        return [stem, f1, f2, self.layer3(f2)]


class ShuffleV2Block(nn.Module):
    """Half the channels pass through; the other half goes 1x1, 3x3 depthwise, 1x1; then shuffle."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.conv1 = nn.Conv2d(half, half, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, half, 3, padding=1, groups=half, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, half, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)

    def forward(self, x: Tensor) -> Tensor:
        kept, branch = x.chunk(2, dim=1)
        out = F.relu(self.bn1(self.conv1(branch)))
        out = self.bn2(self.conv2(out))
        out = F.relu(self.bn3(self.conv3(out)))
        return channel_shuffle(torch.cat([kept, out], 1), 2)


class ShuffleV2Down(nn.Module):
    """Stride-2 block: two branches over the whole input (depthwise-pointwise, and
    pointwise-depthwise-pointwise), concatenated and shuffled."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        mid = cout // 2
        self.conv1 = nn.Conv2d(cin, cin, 3, stride=2, padding=1, groups=cin, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv2 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: Tensor) -> Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = self.bn4(self.conv4(F.relu(self.bn3(self.conv3(x)))))
        right = F.relu(self.bn5(self.conv5(right)))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class ShuffleNetV2(Classifier):
    head_name = "linear"

    def __init__(self, widths: tuple[int, ...], blocks: tuple[int, ...], last: int, num_classes: int = 100) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        cin = 24
        for s, (width, count) in enumerate(zip(widths, blocks), start=1):
            blocks = [ShuffleV2Block(width) for _ in range(count)]
            setattr(self, f"layer{s}", nn.Sequential(ShuffleV2Down(cin, width), *blocks))
            cin = width
        self.conv2 = nn.Conv2d(cin, last, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(last)
        self.linear = nn.Linear(last, num_classes)
        self.num_classes, self.embedding_dim = num_classes, last
        init_conv_bn(self)

    def stages(self, x: Tensor) -> list[Tensor]:
        stem = F.relu(self.bn1(self.conv1(x)))
        f1 = self.layer1(stem)
        f2 = self.layer2(f1)
        return [stem, f1, f2, self.layer3(f2)]

    def embed(self, last_stage: Tensor) -> Tensor:
        """The 1x1 head convolution with BN-ReLU, then global average pooling."""
        return global_pool(F.relu(self.bn2(self.conv2(last_stage))))


@register_model
def ShuffleV1(num_classes: int = 100) -> ShuffleNetV1:
    """CIFAR ShuffleNetV1, 3 groups, widths 240/480/960, 4/8/4 blocks."""
    return ShuffleNetV1((240, 480, 960), (4, 8, 4), groups=3, num_classes=num_classes)


@register_model
def ShuffleV2(num_classes: int = 100) -> ShuffleNetV2:
    """CIFAR ShuffleNetV2 1x, widths 116/232/464, 3/7/3 blocks after each down-sampling block, 1024-wide head."""
    return ShuffleNetV2((116, 232, 464), (3, 7, 3), last=1024, num_classes=num_classes)
