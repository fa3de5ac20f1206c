"""Curriculum temperature (CTKD; Li et al., AAAI 2023): a learned temperature for the logit methods.

Not a method: ``distill.temperature=ctkd`` replaces the fixed temperature of a method that takes a
learned one (KD, DKD; ``intrakd methods`` lists them), its settings in ``distill.ctkd``.

The temperature is ``tau = min_temperature + temperature_range * sigmoid(theta)``, one learned number
``theta`` (started at 1, so ``tau`` starts near 15.6 with the defaults). ``theta`` is trained with the
student's optimiser (momentum, weight decay, learning-rate schedule), but through a gradient-reversal
layer: the forward pass is the identity, the backward pass multiplies the gradient by ``-lambda``, so
``theta`` ascends the distillation loss that the student descends. ``lambda`` follows a cosine
curriculum over the epochs: at the ``e``-th epoch (``e = epoch + 1``),
``lambda = lambda_min + (lambda_max - lambda_min) * (1 - cos(pi * min(e, curriculum_epochs) / curriculum_epochs)) / 2``
(``lambda_max`` throughout when ``curriculum_epochs`` is 0): easy (barely adversarial) first, harder
later. The gradient reaches ``theta`` through every use of ``tau`` in the method's logit terms: both
softmaxes and the ``T^2`` factor.

Reference code (zhengli97/CTKD): ``models/temp_global.py`` (``Global_T``, the reversal layer),
``train_student.py`` (``CosineDecay`` with ``--decay_max 0 --decay_min -1 --decay_loops 10``, counted
from epoch 1; ``t_start`` 1, ``t_end`` 20; the module in the SGD's parameters), ``helper/loops.py``.
Its ``CosineDecay`` value is the reversal layer's factor itself, ``-lambda`` here. Its DKD loss has no
warm-up and its one DKD command (resnet56 -> resnet20, beta 2) has no published CIFAR-100 figure;
the ``dkd-ctkd`` presets keep DKD's own recipe (mdistiller's per-pair weights and 20-epoch warm-up,
which the DKD paper uses against the early instability of large NCKD weights). The instance-wise
variant (a temperature per sample from an MLP) is not published in that repository and is not
implemented here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from intrakd.config import setting
from intrakd.objectives.temperature import LearnedTemperature, register_temperature

INITIAL_PARAMETER = 1.0
"""``theta`` at the start of training (the reference's ``torch.ones(1)``)."""


def reverse_gradient(x: Tensor, strength: float | Tensor) -> Tensor:
    """Gradient reversal: ``x`` in the forward pass (bit for bit), the incoming gradient times
    ``-strength`` in the backward pass."""
    frozen = x.detach()
    return frozen - strength * (x - frozen)


def curriculum_strength(epoch: int, lambda_min: float, lambda_max: float, curriculum_epochs: int) -> float:
    """The reversal strength ``lambda`` of the cosine curriculum at 0-based ``epoch`` (see the module
    docstring)."""
    if curriculum_epochs == 0:
        return lambda_max
    progress = min(epoch + 1, curriculum_epochs) / curriculum_epochs
    return lambda_min + (lambda_max - lambda_min) * (1.0 - math.cos(math.pi * progress)) / 2.0


@dataclass
class CTKDSettings:
    """Curriculum temperature (Li et al., AAAI 2023): a learned temperature, adversarial on a cosine curriculum."""

    min_temperature: float = setting(1.0, "the lowest temperature: tau = min_temperature + temperature_range * "
                                          "sigmoid(theta) (the reference's t_start)", "> 0")
    temperature_range: float = setting(20.0, "the span of the temperature above min_temperature (the "
                                             "reference's t_end)", ">= 0")
    lambda_min: float = setting(0.0, "the reversal strength lambda at the start of the curriculum", ">= 0")
    lambda_max: float = setting(1.0, "the reversal strength lambda at its end and after", ">= 0")
    curriculum_epochs: int = setting(10, "epochs over which lambda goes from lambda_min to lambda_max on a "
                                         "cosine (0: lambda_max throughout)", ">= 0")


@register_temperature("ctkd")
class CurriculumTemperature(LearnedTemperature):
    """Curriculum temperature (Li et al., AAAI 2023): one learned temperature trained through gradient reversal."""

    settings_class = CTKDSettings
    published: ClassVar[dict[tuple[str, str, str], float]] = {
        # KD + CTKD, CIFAR-100: the CTKD repository's README (main results) ...
        ("kd", "resnet56", "resnet20"): 71.19,
        ("kd", "resnet110", "resnet32"): 73.52,
        ("kd", "wrn_40_2", "wrn_16_2"): 75.45,
        ("kd", "wrn_40_2", "wrn_40_1"): 73.93,
        ("kd", "vgg13", "vgg8"): 73.52,
        # ... and the CTKD rows of the logit-standardisation repository's README (the paper's tables)
        ("kd", "resnet32x4", "resnet8x4"): 73.39,
        ("kd", "resnet32x4", "ShuffleV2"): 75.37,
        ("kd", "vgg13", "MobileNetV2"): 68.50,
        ("kd", "ResNet50", "MobileNetV2"): 68.67,
    }

    def __init__(self, settings: CTKDSettings) -> None:
        super().__init__(settings)
        self.theta = nn.Parameter(torch.full((1,), INITIAL_PARAMETER))
        # The reversal strength lambda of the current epoch (set by set_epoch, derived from the epoch:
        # not saved). A tensor, not a number, so that a compiled step does not recompile as it changes.
        self.register_buffer("strength", torch.zeros(()), persistent=False)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        s = self.settings
        self.strength.fill_(curriculum_strength(epoch, s.lambda_min, s.lambda_max, s.curriculum_epochs))

    def forward(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        theta = reverse_gradient(self.theta, self.strength)
        s = self.settings
        return (s.min_temperature + s.temperature_range * torch.sigmoid(theta)).squeeze(0)

    def stats(self) -> dict[str, Tensor]:
        return {"ctkd_lambda": self.strength.clone()}
