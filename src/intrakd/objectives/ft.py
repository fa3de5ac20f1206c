"""Factor transfer (Kim, Park & Kwak, NeurIPS 2018): the teacher's last stage feature is compressed
into a "factor" by a paraphraser, trained first as an autoencoder; a translator maps the student's
last stage feature to a factor of the same size; the loss is the L1 distance of the normalised factors.

Pre-training stage (``init_epochs``, 30): the paraphraser alone, on the frozen teacher's feature,
minimising the mean squared reconstruction error (the paper's eq. 1 with ``p = 2``). Main stage:
cross-entropy plus ``weight * mean |phi(F_T) - phi(F_S)|`` (the paper's eq. 3 with ``p = 1``), with
``F_T`` the frozen paraphraser's factor of the teacher and ``F_S`` the translator's of the student
(the larger map average-pooled to the smaller's size first), and ``phi`` the normalised factor:

* ``factor_map=attention`` (RepDistiller's ``distiller_zoo/FT.py``, which its weight 200 was set
  for): the factor's mean over channels of its squares, flattened and L2-normalised;
* ``factor_map=flat`` (the paper, and its authors' code): the whole factor flattened and L2-normalised.

Defaults are RepDistiller's CIFAR-100 ones (``train_student.py``, ``helper/pretrain.py``,
``models/util.py``): paraphrase rate ``k = 0.5``, three 3x3 convolutions with leaky ReLU (0.1) in the
paraphraser's encoder, mirrored by transposed convolutions in its decoder, no batch norm; the
translator three 3x3 convolutions with batch norm; pre-training at learning rate 0.01 (RepDistiller's
for ResNet and WRN students; its VGG and ResNet50 students pre-train at the run's rate, which the
presets of those pairs set).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from intrakd.config import DistillConfig, setting
from intrakd.data.tensor_data import Batch
from intrakd.models import ModelOutput, probe
from intrakd.objectives.distiller import Distiller, InitStageSettings, TrainSetInfo
from intrakd.objectives.registry import ReferenceDifferences, register_distiller
from intrakd.objectives.repdistiller_figures import REPDISTILLER_CIFAR100_TOP1
from intrakd.objectives.stages import pool_to_smaller


def _conv_stack(channels: list[int], transposed: bool, batch_norm: bool) -> nn.Sequential:
    """3x3 size-preserving (transposed) convolutions between consecutive ``channels``, each followed by
    (batch norm and) leaky ReLU 0.1."""
    conv = nn.ConvTranspose2d if transposed else nn.Conv2d
    layers: list[nn.Module] = []
    for cin, cout in pairwise(channels):
        layers.append(conv(cin, cout, 3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(cout))
        layers.append(nn.LeakyReLU(0.1))
    return nn.Sequential(*layers)


class Paraphraser(nn.Module):
    """Autoencoder of a ``C``-channel feature through a ``k C``-channel factor (the encoder's output)."""

    def __init__(self, channels: int, factor_channels: int) -> None:
        super().__init__()
        self.encoder = _conv_stack([channels, channels, factor_channels, factor_channels], False, False)
        self.decoder = _conv_stack([factor_channels, factor_channels, channels, channels], True, False)

    def forward(self, feature: Tensor) -> Tensor:
        """The reconstruction of ``feature``."""
        return self.decoder(self.encoder(feature))


def translator(channels: int, factor_channels: int) -> nn.Sequential:
    """The student's side: a ``channels`` feature to a ``factor_channels`` factor."""
    return _conv_stack([channels, channels, factor_channels, factor_channels], False, True)


def normalised_factor(factor: Tensor, factor_map: str) -> Tensor:
    """``[B, D]`` L2-normalised factor: of its channel mean of squares (``attention``) or of all of it (``flat``)."""
    values = factor.float().pow(2).mean(dim=1) if factor_map == "attention" else factor.float()
    return F.normalize(values.flatten(1), dim=1)


def ft_loss(student_factor: Tensor, teacher_factor: Tensor, factor_map: str) -> Tensor:
    """Mean absolute difference of the normalised factors, the larger map pooled to the smaller's size."""
    with torch.autocast(device_type=student_factor.device.type, enabled=False):
        student_factor, teacher_factor = pool_to_smaller(student_factor.float(), teacher_factor.float())
        difference = normalised_factor(student_factor, factor_map) - normalised_factor(teacher_factor, factor_map)
        return difference.abs().mean()


@dataclass
class FTSettings(InitStageSettings):
    """Factor transfer (Kim et al., NeurIPS 2018): a pre-trained paraphraser of the teacher, a translator of
    the student."""

    init_lr: float | None = setting(0.01, "constant learning rate of the paraphraser's pre-training (unset: optim.lr)",
                                    "> 0")
    weight: float = setting(200.0, "weight of the factor term of the main stage", ">= 0")
    rate: float = setting(0.5, "paraphrase rate k: factor channels = k * the teacher's last-stage channels", "> 0")
    factor_map: Literal["attention", "flat"] = setting(
        "attention", "what is normalised and compared: the factor's channel mean of squares (RepDistiller) or the "
                     "whole factor (the paper; set weight anew)")


STUDENTS_AT_RUN_LR = ("vgg8", "vgg11", "vgg13", "vgg16", "vgg19", "ResNet50")
"""Students whose paraphraser RepDistiller pre-trains at the run's learning rate (0.01 for the others)."""


REFERENCE = ReferenceDifferences("RepDistiller: distiller_zoo/FT.py, helper/pretrain.py")
"""The reference code this method follows, and its deliberate differences from it."""


@register_distiller("ft", REFERENCE)
class FTObjective(Distiller):
    """Factor transfer (Kim et al., NeurIPS 2018): L1 between a paraphraser's and a translator's factors."""

    kind = "features"
    published = REPDISTILLER_CIFAR100_TOP1["ft"]
    settings_class = FTSettings
    recipe = (1.0, 0.0)

    def __init__(self, cfg: DistillConfig, student: nn.Module, teacher: nn.Module, data: TrainSetInfo) -> None:
        super().__init__(cfg, student, teacher, data)
        t_channels = probe(teacher, data.input_shape).features[-1].shape[1]
        s_channels = probe(student, data.input_shape).features[-1].shape[1]
        factor_channels = max(1, int(t_channels * self.settings.rate))
        self.paraphraser = Paraphraser(t_channels, factor_channels)
        self.translator = translator(s_channels, factor_channels)

    @classmethod
    def pair_settings(cls, teacher_model: str, student_model: str) -> dict[str, Any]:
        return {"init_lr": None} if student_model in STUDENTS_AT_RUN_LR else {}

    def init_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """The paraphraser alone (the student and the teacher stay as they are)."""
        return list(self.paraphraser.parameters())

    def init_losses(self, student: ModelOutput, teacher: ModelOutput,
                    batch: Batch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        feature = teacher.features[-1]
        return {"ft_reconstruction": F.mse_loss(self.paraphraser(feature).float(), feature.float())}, {}

    def method_losses(self, student: ModelOutput, teacher: ModelOutput,
                      batch: Batch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        with torch.no_grad():  # the paraphraser is frozen after its pre-training
            teacher_factor = self.paraphraser.encoder(teacher.features[-1])
        student_factor = self.translator(student.features[-1])
        return {"ft": self.settings.weight * ft_loss(student_factor, teacher_factor, self.settings.factor_map)}, {}
