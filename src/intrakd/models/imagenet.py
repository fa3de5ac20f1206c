"""ImageNet-size models: torchvision's ResNet-18/34/50 and MobileNetV2, and a MobileNetV1.

Names start with ``imagenet_`` (``imagenet_resnet18`` is torchvision's 7x7-stem ResNet-18; the
capitalised ``ResNet18`` is the CIFAR benchmark's 3x3-stem one). The torchvision models keep
torchvision's parameter names, so a torchvision ``.pth`` file (a bare state_dict) loads as it is, as a
teacher checkpoint (``teacher_model=imagenet_resnet34 --teacher resnet34-b627a593.pth``) or through
``create_model(name, num_classes, weights=PATH)``. ``imagenet_mobilenet_v1`` follows the layout of the
MobileNetV1 of the ImageNet KD benchmark (``model.<i>`` conv blocks and ``fc``). Weights are read
from local files only; nothing is ever downloaded.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torchvision
from torch import Tensor, nn

from intrakd.models.checkpoint import load_weights, read_checkpoint
from intrakd.models.contract import Classifier, global_pool
from intrakd.models.layers import init_conv_bn
from intrakd.models.registry import register_variant


def load_local_weights(model: Classifier, weights: str | Path, name: str) -> Classifier:
    """Load a local weights file (a bare state_dict, or a dict with a ``model`` state_dict) into
    ``model``, or raise naming the missing, unexpected and mis-shaped keys."""
    load_weights(model, read_checkpoint(weights)["model"], f"weights file {weights}", name)
    return model


class TorchvisionResNet(Classifier):
    """A torchvision ResNet under the model contract; stages are the stem (after max pooling) and
    ``layer1`` ... ``layer4``."""

    def __init__(self, build: Callable[..., torchvision.models.ResNet], num_classes: int) -> None:
        super().__init__()
        net = build(weights=None, num_classes=num_classes)
        for part in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "fc"):
            setattr(self, part, getattr(net, part))
        self.num_classes, self.embedding_dim = num_classes, net.fc.in_features

    def stages(self, x: Tensor) -> list[Tensor]:
        features = [self.maxpool(self.relu(self.bn1(self.conv1(x))))]
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            features.append(layer(features[-1]))
        return features


class TorchvisionMobileNetV2(Classifier):
    """torchvision's MobileNetV2 under the model contract; the head is its dropout + linear
    ``classifier``; stages end where the resolution halves and at the last inverted-residual block
    (320 channels); the 1x1 convolution to 1280 channels belongs to the embedding."""

    head_name = "classifier"
    STAGE_ENDS = (1, 3, 6, 13, 17)

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        net = torchvision.models.mobilenet_v2(weights=None, num_classes=num_classes)
        self.features, self.classifier = net.features, net.classifier
        self.num_classes, self.embedding_dim = num_classes, net.last_channel

    def stages(self, x: Tensor) -> list[Tensor]:
        features = []
        for i, layer in enumerate(self.features[:-1]):
            x = layer(x)
            if i in self.STAGE_ENDS:
                features.append(x)
        return features

    def embed(self, last_stage: Tensor) -> Tensor:
        """The last feature layer (1x1 convolution to 1280 channels, BN-ReLU6), then global average pooling."""
        return global_pool(self.features[-1](last_stage))


def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class MobileNetV1(Classifier):
    """MobileNetV1 (width 1.0): a 3x3 stem and 13 depthwise-separable blocks; stages end at the
    blocks after which the resolution halves (64, 128, 256, 512 and 1024 channels)."""

    # (output channels, stride) of the depthwise-separable blocks
    BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1), (512, 1),
              (512, 1), (512, 1), (1024, 2), (1024, 1))
    STAGE_ENDS = (1, 3, 5, 11, 13)

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        layers = [nn.Sequential(*_conv_bn_relu(3, 32, 3, stride=2))]
        cin = 32
        for cout, stride in self.BLOCKS:
            layers.append(nn.Sequential(*_conv_bn_relu(cin, cin, 3, stride, groups=cin), *_conv_bn_relu(cin, cout, 1)))
            cin = cout
        self.model = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)
        self.num_classes, self.embedding_dim = num_classes, cin
        init_conv_bn(self)

    def stages(self, x: Tensor) -> list[Tensor]:
        features = []
        for i, layer in enumerate(self.model):
            x = layer(x)
            if i in self.STAGE_ENDS:
                features.append(x)
        return features


def _register(name: str, make: Callable[[int], Classifier], doc: str) -> None:
    def build(num_classes: int, weights: str | Path | None = None) -> Classifier:
        model = make(num_classes)
        return model if weights is None else load_local_weights(model, weights, name)

    register_variant(name, build, f"{doc}\n\n``weights``: a local weights file to load (never downloaded).",
                     num_classes=1000)


_register("imagenet_resnet18", lambda n: TorchvisionResNet(torchvision.models.resnet18, n),
          "ImageNet-size ResNet-18 (torchvision layout; 7x7 stem and max pooling).")
_register("imagenet_resnet34", lambda n: TorchvisionResNet(torchvision.models.resnet34, n),
          "ImageNet-size ResNet-34 (torchvision layout; 7x7 stem and max pooling).")
_register("imagenet_resnet50", lambda n: TorchvisionResNet(torchvision.models.resnet50, n),
          "ImageNet-size ResNet-50 (torchvision layout; 7x7 stem and max pooling).")
_register("imagenet_mobilenet_v2", TorchvisionMobileNetV2, "ImageNet-size MobileNetV2 (torchvision layout).")
_register("imagenet_mobilenet_v1", MobileNetV1,
          "ImageNet-size MobileNetV1 (the ImageNet KD benchmark's layout; torchvision has none).")
