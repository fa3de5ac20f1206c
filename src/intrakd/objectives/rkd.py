"""Relational knowledge distillation (Park, Kim, Lu & Cho, CVPR 2019) on the embeddings.

Distance potential: ``psi_D(i, j) = ||e_i - e_j|| / mu`` with ``mu`` the mean distance over the pairs
``i != j`` of the batch. Angle potential: ``psi_A(i, j, k) = <(e_i - e_j) / ||e_i - e_j||,
(e_k - e_j) / ||e_k - e_j||>``, the cosine of the angle at ``e_j`` (0 where a difference vanishes).
Each loss is the Huber loss (delta 1) between the student's and the teacher's potentials, averaged
over all ``B^2`` ordered pairs, respectively ``B^3`` ordered triplets (the reference normalisation).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from intrakd.config import ConfigError, setting
from intrakd.data.tensor_data import Batch
from intrakd.models import ModelOutput
from intrakd.objectives.distiller import Distiller
from intrakd.objectives.registry import ReferenceDifferences, register_distiller
from intrakd.objectives.repdistiller_figures import REPDISTILLER_CIFAR100_TOP1


def distance_potential(embedding: Tensor) -> Tensor:
    """``[B, B]`` pairwise Euclidean distances divided by their mean over ``i != j`` (0 on the diagonal)."""
    b = embedding.shape[0]
    off_diagonal = ~torch.eye(b, dtype=torch.bool, device=embedding.device)
    squared = (embedding[:, None, :] - embedding[None, :, :]).pow(2).sum(-1)
    distance = squared.clamp_min(1e-12).sqrt() * off_diagonal  # clamp: finite gradient at 0
    return distance / (distance.sum() / (b * (b - 1))).clamp_min(1e-12)


def angle_potential(embedding: Tensor) -> Tensor:
    """``[B, B, B]``: entry ``[j, i, k]`` is the cosine of the angle between ``e_i - e_j`` and ``e_k - e_j``."""
    directions = F.normalize(embedding[None, :, :] - embedding[:, None, :], dim=2)  # [j, i] = e_i - e_j
    return directions @ directions.transpose(1, 2)


def rkd_losses(student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
    """``(distance loss, angle loss)`` between ``[B, D_s]`` and ``[B, D_t]`` embeddings, in float32."""
    if student.shape[0] < 2:
        raise ConfigError("RKD needs at least 2 samples per batch")
    with torch.autocast(device_type=student.device.type, enabled=False):
        student, teacher = student.float(), teacher.float()
        with torch.no_grad():
            teacher_distance, teacher_angle = distance_potential(teacher), angle_potential(teacher)
        distance = F.smooth_l1_loss(distance_potential(student), teacher_distance)
        angle = F.smooth_l1_loss(angle_potential(student), teacher_angle)
    return distance, angle


@dataclass
class RKDSettings:
    """Relational KD (Park et al., CVPR 2019): distance and angle relations of the embeddings."""

    distance_weight: float = setting(25.0, "weight of the pairwise-distance term", ">= 0")
    angle_weight: float = setting(50.0, "weight of the triplet-angle term", ">= 0")


REFERENCE = ReferenceDifferences("RepDistiller: distiller_zoo/RKD.py")
"""The reference code this method follows, and its deliberate differences from it."""


@register_distiller("rkd", REFERENCE)
class RKDObjective(Distiller):
    """Relational KD (Park et al., CVPR 2019): distance and angle relations among the embeddings."""

    kind = "relations"
    published = REPDISTILLER_CIFAR100_TOP1["rkd"]
    teacher_in_graph = False
    settings_class = RKDSettings
    recipe = (1.0, 0.0)

    def method_losses(self, student: ModelOutput, teacher: ModelOutput,
                      batch: Batch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        distance, angle = rkd_losses(student.embedding, teacher.embedding)
        return {"rkd_distance": self.settings.distance_weight * distance,
                "rkd_angle": self.settings.angle_weight * angle}, {}
