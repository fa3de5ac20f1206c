"""DIST (Huang et al., "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022).

With ``Y = softmax(z / T)`` the ``[B, C]`` softened predictions of a batch, DIST matches relations
rather than values, by Pearson correlation ``rho(u, v) = (u - mean u) . (v - mean v) / (||u - mean u||
||v - mean v|| + eps)``:

* inter-class: ``1 - mean_b rho(Y_student[b, :], Y_teacher[b, :])``, each sample's predictions over
  the classes;
* intra-class: ``1 - mean_c rho(Y_student[:, c], Y_teacher[:, c])``, each class's predictions over
  the batch.

The loss is ``T^2 (inter_weight * inter + intra_weight * intra)``. The reference code (hunto/
image_classification_sota ``lib/models/losses/dist_kd.py``, which hunto/DIST_KD runs;
``configs/strategies/distill/dist_cifar.yaml``) computes it with ``eps = 1e-8`` and, on CIFAR-100,
``kd: dist_t4`` (``T = 4``, beta = gamma = 1) times ``kd_loss_weight: 2`` beside the cross-entropy at
weight 1: the ``inter_weight`` and ``intra_weight`` of 2 here. Its schedule (lr 0.05, 0.01 for
MobileNetV2 and ShuffleNets, batch 64, 240 epochs, x0.1 at 150/180/210, wd 5e-4) is the presets' CIFAR-100 one.

``distill.logit_standardize`` does not change DIST's term: neither DIST's paper nor the
logit-standardisation paper (whose tables cover KD, CTKD, DKD and MLKD, not DIST) publishes a
standardised DIST, so DIST has no ``-ls`` recipe; the flag still standardises the KD term that
``distill.kd_weight > 0`` adds (as it leaves MLKD's correlation levels alone).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from intrakd.config import setting
from intrakd.data.tensor_data import Batch
from intrakd.models import ModelOutput
from intrakd.objectives.distiller import Distiller
from intrakd.objectives.registry import ReferenceDifferences, register_distiller

PEARSON_EPS = 1e-8
"""Added to the product of the norms (the reference code's value)."""


def pearson_rows(a: Tensor, b: Tensor) -> Tensor:
    """``[N]`` Pearson correlations of the rows of two ``[N, D]`` tensors (``eps`` in the denominator)."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + PEARSON_EPS)


def dist_terms(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """``(inter, intra)``: DIST's two relation losses of the predictions softened at ``temperature``,
    each times ``T^2``, computed in float32."""
    with torch.autocast(device_type=student_logits.device.type, enabled=False):
        y_s = F.softmax(student_logits.float() / temperature, dim=1)
        y_t = F.softmax(teacher_logits.float() / temperature, dim=1)
        inter = 1.0 - pearson_rows(y_s, y_t).mean()
        intra = 1.0 - pearson_rows(y_s.T, y_t.T).mean()
    return inter * temperature**2, intra * temperature**2


@dataclass
class DISTSettings:
    """DIST (Huang et al., NeurIPS 2022): inter- and intra-class Pearson correlation of the predictions."""

    inter_weight: float = setting(2.0, "weight of the inter-class relation term (the reference's kd_loss_weight "
                                       "2 x beta 1 on CIFAR-100)", ">= 0")
    intra_weight: float = setting(2.0, "weight of the intra-class relation term (kd_loss_weight 2 x gamma 1)",
                                  ">= 0")


REFERENCE = ReferenceDifferences(
    "hunto/image_classification_sota: lib/models/losses/dist_kd.py, configs/strategies/distill/dist_cifar.yaml")


@register_distiller("dist", REFERENCE)
class DISTObjective(Distiller):
    """DIST (Huang et al., NeurIPS 2022): inter- and intra-class correlation of the softened predictions."""

    kind = "logits"
    teacher_in_graph = False
    settings_class = DISTSettings
    recipe = (1.0, 0.0)
    # CIFAR-100 top-1 (mean of the runs): the DIST_KD repository's README
    published: ClassVar[dict[tuple[str, str], float]] = {
        ("wrn_40_2", "wrn_40_1"): 74.43,
        ("resnet56", "resnet20"): 71.75,
        ("resnet32x4", "resnet8x4"): 76.31,
        ("ResNet50", "MobileNetV2"): 68.66,
        ("resnet32x4", "ShuffleV1"): 76.34,
        ("resnet32x4", "ShuffleV2"): 77.35,
    }

    def method_losses(self, student: ModelOutput, teacher: ModelOutput,
                      batch: Batch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        inter, intra = dist_terms(student.logits, teacher.logits, self.temperature)
        s = self.settings
        return {"dist_inter": s.inter_weight * inter, "dist_intra": s.intra_weight * intra}, {}
