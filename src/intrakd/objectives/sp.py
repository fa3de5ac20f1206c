"""Similarity-preserving knowledge distillation (Tung & Mori, ICCV 2019) on the last stage feature.

``G = F F^T`` for the flattened ``[B, C*H*W]`` feature ``F``, each row L2-normalised; the loss is
``||G_student - G_teacher||_F^2 / B^2``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from intrakd.config import setting
from intrakd.data.tensor_data import Batch
from intrakd.models import ModelOutput
from intrakd.objectives.distiller import Distiller
from intrakd.objectives.registry import ReferenceDifferences, register_distiller
from intrakd.objectives.repdistiller_figures import REPDISTILLER_CIFAR100_TOP1


def similarity_matrix(feature: Tensor) -> Tensor:
    """``[B, B]`` batch similarity of a feature map, rows L2-normalised."""
    flat = feature.float().flatten(1)
    return F.normalize(flat @ flat.T, dim=1)


def sp_loss(student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
    """Similarity-preserving loss between two ``[B, ...]`` features (any shapes), in float32."""
    with torch.autocast(device_type=student_feature.device.type, enabled=False):
        difference = similarity_matrix(student_feature) - similarity_matrix(teacher_feature)
        return difference.pow(2).sum() / student_feature.shape[0] ** 2


@dataclass
class SPSettings:
    """Similarity-preserving KD (Tung & Mori, ICCV 2019) on the last stage feature."""

    weight: float = setting(3000.0, "weight of the similarity-preserving term", ">= 0")


REFERENCE = ReferenceDifferences("RepDistiller: distiller_zoo/SP.py")
"""The reference code this method follows, and its deliberate differences from it."""


@register_distiller("sp", REFERENCE)
class SPObjective(Distiller):
    """Similarity-preserving KD (Tung & Mori, ICCV 2019): the batch's pairwise similarities."""

    kind = "relations"
    published = REPDISTILLER_CIFAR100_TOP1["sp"]
    teacher_in_graph = False
    settings_class = SPSettings
    recipe = (1.0, 0.0)

    def method_losses(self, student: ModelOutput, teacher: ModelOutput,
                      batch: Batch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        return {"sp": self.settings.weight * sp_loss(student.features[-1], teacher.features[-1])}, {}
