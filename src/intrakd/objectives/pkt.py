"""Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018) on the embeddings.

With ``c_ij`` the cosine similarity of embeddings ``i`` and ``j``, the kernel ``K_ij = (c_ij + 1) / 2``
is normalised over ``j`` into conditional probabilities ``p_j|i = K_ij / sum_j K_ij``; the loss is
``mean_ij p^t_j|i * log((p^t_j|i + eps) / (p^s_j|i + eps))`` with ``eps = 1e-7`` (the KL divergence
of the paper, averaged over the ``B^2`` entries as in the reference recipe).
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

PKT_EPS = 1e-7


def conditional_probabilities(embedding: Tensor) -> Tensor:
    """``[B, B]`` row-stochastic matrix ``p_j|i`` of the cosine kernel ``(cos + 1) / 2``."""
    unit = F.normalize(embedding.float(), dim=1)
    kernel = (unit @ unit.T + 1.0) / 2.0
    return kernel / kernel.sum(dim=1, keepdim=True)


def pkt_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """PKT loss between ``[B, D_s]`` and ``[B, D_t]`` embeddings, in float32."""
    with torch.autocast(device_type=student.device.type, enabled=False):
        p_student, p_teacher = conditional_probabilities(student), conditional_probabilities(teacher)
        return (p_teacher * torch.log((p_teacher + PKT_EPS) / (p_student + PKT_EPS))).mean()


@dataclass
class PKTSettings:
    """Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018) on the embeddings."""

    weight: float = setting(30000.0, "weight of the PKT term", ">= 0")


REFERENCE = ReferenceDifferences("RepDistiller: distiller_zoo/PKT.py")
"""The reference code this method follows, and its deliberate differences from it."""


@register_distiller("pkt", REFERENCE)
class PKTObjective(Distiller):
    """Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018): the embeddings' kernel densities."""

    kind = "embedding"
    published = REPDISTILLER_CIFAR100_TOP1["pkt"]
    teacher_in_graph = False
    settings_class = PKTSettings
    recipe = (1.0, 0.0)

    def method_losses(self, student: ModelOutput, teacher: ModelOutput,
                      batch: Batch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        return {"pkt": self.settings.weight * pkt_loss(student.embedding, teacher.embedding)}, {}
