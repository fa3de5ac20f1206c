"""Small pieces shared by the zoo: weight initialisation and ShuffleNet's channel shuffle."""

from __future__ import annotations

from torch import Tensor, nn


def init_conv_bn(model: nn.Module) -> None:
    """He-normal (fan-out) convolutions with zero bias, BatchNorm at identity; linear layers keep
    PyTorch's default. The initialisation used across the CIFAR KD benchmark's models."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Interleave the channels of ``groups`` equal groups: channel ``g * (C / groups) + i`` moves to
    position ``i * groups + g``."""
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)
