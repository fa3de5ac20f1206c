"""Wide ResNets of the CIFAR KD benchmark (wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2).

Pre-activation basic blocks in three stages of ``(depth - 4) / 6`` blocks, widths ``16k, 32k, 64k``.
Parameter names and shapes match the benchmark's shared pretrained checkpoints.
"""

from __future__ import annotations

from functools import partial

import torch.nn.functional as F
from torch import Tensor, nn

from intrakd.models.contract import Classifier, global_pool
from intrakd.models.layers import init_conv_bn
from intrakd.models.registry import register_variant


class WideBlock(nn.Module):
    """BN-ReLU-conv-BN-ReLU-conv; a 1x1 convolution on the activated input when the width or the
    resolution changes, the identity otherwise."""

    def __init__(self, inplanes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.same_shape = inplanes == planes and stride == 1
        self.convShortcut = None if self.same_shape else nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        act = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(act))))
        return out + (x if self.convShortcut is None else self.convShortcut(act))


class WideStage(nn.Module):
    def __init__(self, blocks: int, inplanes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *[WideBlock(inplanes if i == 0 else planes, planes, stride if i == 0 else 1) for i in range(blocks)]
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(Classifier):
    """WRN-depth-k for 32x32 inputs (any size works: pooling is adaptive)."""

    def __init__(self, depth: int, widen: int, num_classes: int = 100) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"depth must be 6n + 4, got {depth}")
        blocks = (depth - 4) // 6
        widths = (16, 16 * widen, 32 * widen, 64 * widen)
        self.num_classes, self.embedding_dim = num_classes, widths[3]
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.block1 = WideStage(blocks, widths[0], widths[1], 1)
        self.block2 = WideStage(blocks, widths[1], widths[2], 2)
        self.block3 = WideStage(blocks, widths[2], widths[3], 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        init_conv_bn(self)
        nn.init.zeros_(self.fc.bias)

    def stages(self, x: Tensor) -> list[Tensor]:
        """The stem convolution and the outputs of ``block1`` ... ``block3``, as the blocks return them
        (pre-activation design: before the BN-ReLU that follows each)."""
        stem = self.conv1(x)
        f1 = self.block1(stem)
        f2 = self.block2(f1)
        return [stem, f1, f2, self.block3(f2)]

    def embed(self, last_stage: Tensor) -> Tensor:
        """The final BN-ReLU, then global average pooling."""
        return global_pool(F.relu(self.bn1(last_stage)))


for _depth, _widen in ((16, 1), (16, 2), (40, 1), (40, 2)):
    register_variant(f"wrn_{_depth}_{_widen}", partial(WideResNet, _depth, _widen),
                     f"CIFAR Wide ResNet {_depth}-{_widen}.")
