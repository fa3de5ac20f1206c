"""Attention transfer (Zagoruyko & Komodakis, ICLR 2017) on the stage features.

The attention map of a ``[B, C, H, W]`` feature is ``mean_c |A_c|^p`` flattened and L2-normalised; the
loss is the mean squared difference of the student's and teacher's maps, summed over the paired stages
(see :mod:`intrakd.objectives.stages`: from ``first_stage`` on, the larger map pooled to the smaller).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from intrakd.config import DistillConfig, setting
from intrakd.data.tensor_data import Batch
from intrakd.models import ModelOutput
from intrakd.objectives.distiller import Distiller, TrainSetInfo
from intrakd.objectives.registry import ReferenceDifferences, register_distiller
from intrakd.objectives.repdistiller_figures import REPDISTILLER_CIFAR100_TOP1
from intrakd.objectives.stages import pool_to_smaller, probe_stage_pairs, stage_pairs


def attention_map(feature: Tensor, p: float) -> Tensor:
    """``[B, H*W]`` normalised spatial attention of a ``[B, C, H, W]`` feature."""
    return F.normalize(feature.float().abs().pow(p).mean(dim=1).flatten(1), dim=1)


def at_loss(student_feature: Tensor, teacher_feature: Tensor, p: float) -> Tensor:
    """Attention-transfer loss of one stage, in float32."""
    with torch.autocast(device_type=student_feature.device.type, enabled=False):
        student_feature, teacher_feature = pool_to_smaller(student_feature.float(), teacher_feature.float())
        return (attention_map(student_feature, p) - attention_map(teacher_feature, p)).pow(2).mean()


@dataclass
class ATSettings:
    """Attention transfer (Zagoruyko & Komodakis, ICLR 2017) on the stage features."""

    weight: float = setting(1000.0, "weight of the attention term (summed over stages)", ">= 0")
    p: float = setting(2.0, "attention map = mean over channels of |feature|^p", "> 0")
    first_stage: int = setting(1, "first stage feature used (the standard skips the stem at index 0)", ">= 0")


REFERENCE = ReferenceDifferences("RepDistiller: distiller_zoo/AT.py")
"""The reference code this method follows, and its deliberate differences from it."""


@register_distiller("at", REFERENCE)
class ATObjective(Distiller):
    """Attention transfer (Zagoruyko & Komodakis, ICLR 2017): spatial attention of every stage."""

    kind = "features"
    published = REPDISTILLER_CIFAR100_TOP1["at"]
    teacher_in_graph = False
    settings_class = ATSettings
    recipe = (1.0, 0.0)

    def __init__(self, cfg: DistillConfig, student: nn.Module, teacher: nn.Module, data: TrainSetInfo) -> None:
        super().__init__(cfg, student, teacher, data)
        probe_stage_pairs(student, teacher, data.input_shape, self.settings.first_stage, "at")

    def method_losses(self, student: ModelOutput, teacher: ModelOutput,
                      batch: Batch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        first, p = self.settings.first_stage, self.settings.p
        losses = [at_loss(s, t, p) for s, t in stage_pairs(student.features, teacher.features, first)]
        return {"at": self.settings.weight * torch.stack(losses).sum()}, {}
