"""VGG networks with BatchNorm of the CIFAR KD benchmark (vgg8, vgg11, vgg13, vgg16, vgg19).

Five conv groups (``block0`` ... ``block4``); 2x2 max pooling after the first three, and after the
fourth only for inputs larger than 32x32 (so 32x32 and 64x64 inputs both reach block4 at 4x4, as in
the benchmark); adaptive average pooling; one linear layer named ``classifier``.
"""

from __future__ import annotations

from functools import partial

import torch.nn.functional as F
from torch import Tensor, nn

from intrakd.models.contract import Classifier
from intrakd.models.layers import init_conv_bn
from intrakd.models.registry import register_variant

VGG_WIDTHS: dict[str, list[list[int]]] = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "vgg19": [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
}


def _conv_group(cin: int, widths: list[int]) -> nn.Sequential:
    """conv3x3(+bias)-BN-ReLU repeated, without the last ReLU (the model applies it, so the group's
    output is the pre-activation feature)."""
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Conv2d(cin, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        cin = width
    return nn.Sequential(*layers[:-1])


class VGG(Classifier):
    head_name = "classifier"

    def __init__(self, widths: list[list[int]], num_classes: int = 100) -> None:
        super().__init__()
        self.num_classes, self.embedding_dim = num_classes, widths[4][-1]
        cin = 3
        for i, group in enumerate(widths):
            setattr(self, f"block{i}", _conv_group(cin, group))
            cin = group[-1]
        self.classifier = nn.Linear(cin, num_classes)
        init_conv_bn(self)
        nn.init.normal_(self.classifier.weight, 0, 0.01)
        nn.init.zeros_(self.classifier.bias)

    def stages(self, x: Tensor) -> list[Tensor]:
        f0 = F.relu(self.block0(x))
        f1 = F.relu(self.block1(F.max_pool2d(f0, 2)))
        f2 = F.relu(self.block2(F.max_pool2d(f1, 2)))
        f3 = F.relu(self.block3(F.max_pool2d(f2, 2)))
        x = F.max_pool2d(f3, 2) if f3.shape[-1] > 4 else f3
        return [f0, f1, f2, f3, F.relu(self.block4(x))]


for _name, _widths in VGG_WIDTHS.items():
    register_variant(_name, partial(VGG, _widths), f"CIFAR {_name} with BatchNorm.")
