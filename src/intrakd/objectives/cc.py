"""Correlation congruence (Peng et al., ICCV 2019) on the embeddings.

The correlation of two L2-normalised embeddings ``x, y`` is the Gaussian RBF
``exp(-gamma ||x - y||^2) = exp(-2 gamma) exp(2 gamma x . y)``, with the second factor replaced by its
Taylor expansion to order ``P``: ``k(x, y) = sum_{p=0..P} exp(-2 gamma) (2 gamma)^p / p! (x . y)^p``
(the paper's kernel). The loss is the mean over the ``B^2`` pairs of the batch of the squared
difference of the student's and the teacher's correlations.

The student's embedding goes through a learned linear head (RepDistiller's ``LinearEmbed``, 128-d);
the teacher's correlations are those of its own embedding. Two choices differ from RepDistiller: its
``Correlation`` loss is another formula (the mean over consecutive samples of the products of
absolute head-output differences, ``sum_d |s_i - t_i|_d |s_(i+1) - t_(i+1)|_d``), and it also trains
a head on the teacher's side, which lets the target drift towards the student (both heads mapping
every sample to one direction zeroes the loss); the teacher's relations here stay those it learned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from intrakd.config import DistillConfig, setting
from intrakd.data.tensor_data import Batch
from intrakd.models import ModelOutput, probe
from intrakd.objectives.distiller import Distiller, TrainSetInfo
from intrakd.objectives.registry import Difference, ReferenceDifferences, register_distiller
from intrakd.objectives.repdistiller_figures import REPDISTILLER_CIFAR100_TOP1


def correlation_matrix(embedding: Tensor, gamma: float, order: int) -> Tensor:
    """``[B, B]`` Taylor-expanded Gaussian-RBF correlations of the L2-normalised rows of ``embedding``."""
    unit = F.normalize(embedding.float(), dim=1)
    cosine = unit @ unit.T
    coefficients = [math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) for p in range(order + 1)]
    return sum((c * cosine.pow(p) for p, c in enumerate(coefficients)), torch.zeros_like(cosine))


def cc_loss(student: Tensor, teacher: Tensor, gamma: float, order: int) -> Tensor:
    """Correlation-congruence loss between ``[B, D_s]`` and ``[B, D_t]`` embeddings, in float32."""
    with torch.autocast(device_type=student.device.type, enabled=False):
        target = correlation_matrix(teacher, gamma, order).detach()
        return (correlation_matrix(student, gamma, order) - target).pow(2).mean()


@dataclass
class CCSettings:
    """Correlation congruence (Peng et al., ICCV 2019) with the paper's Taylor-expanded RBF kernel: gamma
    0.4, order 2 and weight 100 of AberHu/Knowledge-Distillation-Zoo (kd_losses/cc.py,
    example_train_script.sh, CIFAR-10 there); the 128-d head of
    RepDistiller (train_student.py: LinearEmbed, --feat_dim 128). RepDistiller's weight 0.02
    (scripts/run_cifar_distill.sh) scales its other formula."""

    weight: float = setting(100.0, "weight of the correlation term", ">= 0")
    feat_dim: int = setting(128, "output dimension of the student's linear embedding head", ">= 1")
    gamma: float = setting(0.4, "RBF kernel exp(-gamma ||x - y||^2) of the normalised embeddings", "> 0")
    order: int = setting(2, "order P of the kernel's Taylor expansion", ">= 0")


REFERENCE = ReferenceDifferences(
    "RepDistiller: distiller_zoo/CC.py, models/util.py (LinearEmbed)",
    (
        Difference(
            "the correlation is the paper's RBF kernel (order 2) of each model's embedding, not "
            "RepDistiller's product of absolute head-output differences of consecutive samples",
            "the paper's formula; RepDistiller's is another loss",
            "a different loss value and gradient; weight 100 set for this formula"),
        Difference(
            "no learned head on the teacher's side: its correlations are those of its own embedding",
            "a trained teacher-side head can drift towards the student and zero the loss",
            "the target stays what the teacher learned"),
    ))
"""The reference code this method follows, and its deliberate differences from it."""


@register_distiller("cc", REFERENCE)
class CCObjective(Distiller):
    """Correlation congruence (Peng et al., ICCV 2019): the batch's RBF correlations of the embeddings."""

    kind = "relations"
    published = REPDISTILLER_CIFAR100_TOP1["cc"]
    teacher_in_graph = False
    settings_class = CCSettings
    recipe = (1.0, 0.0)

    def __init__(self, cfg: DistillConfig, student: nn.Module, teacher: nn.Module, data: TrainSetInfo) -> None:
        super().__init__(cfg, student, teacher, data)
        self.embed_student = nn.Linear(probe(student, data.input_shape).embedding.shape[1], self.settings.feat_dim)

    def method_losses(self, student: ModelOutput, teacher: ModelOutput,
                      batch: Batch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        s = self.settings
        loss = cc_loss(self.embed_student(student.embedding), teacher.embedding, s.gamma, s.order)
        return {"cc": s.weight * loss}, {}
