"""Neuron selectivity transfer (Huang & Wang, 2017: "Like what you like").

Each channel of a paired stage (see :mod:`intrakd.objectives.stages`) is one sample of the model's
distribution of neuron selectivity: its ``H*W`` activations, L2-normalised. The loss of a stage is the
squared maximum mean discrepancy between the student's ``C_s`` and the teacher's ``C_t`` such samples
under the polynomial kernel ``k(x, y) = (x . y)^2`` (degree 2, offset 0):
``mean_ij k(t_i, t_j) + mean_ij k(s_i, s_j) - 2 mean_ij k(s_i, t_j)``, averaged over the batch; the
stages are summed. The teacher-only term is a constant of the student's training (its value is kept,
so the loss is the MMD itself).
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


def _mean_kernel(a: Tensor, b: Tensor) -> Tensor:
    """``[B]``: mean over channel pairs of ``(a_i . b_j)^2`` for ``[B, C_a, N]`` and ``[B, C_b, N]``."""
    return (a @ b.transpose(1, 2)).pow(2).mean(dim=(1, 2))


def nst_loss(student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
    """Polynomial-kernel MMD^2 of one stage, in float32 (the larger map is pooled to the smaller)."""
    with torch.autocast(device_type=student_feature.device.type, enabled=False):
        f_s, f_t = pool_to_smaller(student_feature.float(), teacher_feature.float())
        s = F.normalize(f_s.flatten(2), dim=2)
        t = F.normalize(f_t.flatten(2), dim=2)
        return (_mean_kernel(t, t).detach() + _mean_kernel(s, s) - 2 * _mean_kernel(s, t)).mean()


@dataclass
class NSTSettings:
    """Neuron selectivity transfer (Huang & Wang, 2017); CIFAR-100 defaults of RepDistiller
    (distiller_zoo/NST.py, scripts/run_cifar_distill.sh: -b 50, layers feat[1:-1]) and mdistiller
    (mdistiller/engine/cfg.py: NST.LOSS.FEAT_WEIGHT 50)."""

    weight: float = setting(50.0, "weight of the MMD term (summed over stages)", ">= 0")
    first_stage: int = setting(1, "first stage feature used (the reference skips the stem at index 0)", ">= 0")


REFERENCE = ReferenceDifferences("RepDistiller: distiller_zoo/NST.py")
"""The reference code this method follows, and its deliberate differences from it."""


@register_distiller("nst", REFERENCE)
class NSTObjective(Distiller):
    """Neuron selectivity transfer (Huang & Wang, 2017): polynomial-kernel MMD of the channels' activations."""

    kind = "features"
    published = REPDISTILLER_CIFAR100_TOP1["nst"]
    teacher_in_graph = False
    settings_class = NSTSettings
    recipe = (1.0, 0.0)

    def __init__(self, cfg: DistillConfig, student: nn.Module, teacher: nn.Module, data: TrainSetInfo) -> None:
        super().__init__(cfg, student, teacher, data)
        probe_stage_pairs(student, teacher, data.input_shape, self.settings.first_stage, "nst")

    def method_losses(self, student: ModelOutput, teacher: ModelOutput,
                      batch: Batch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        pairs = stage_pairs(student.features, teacher.features, self.settings.first_stage)
        losses = [nst_loss(f_s, f_t) for f_s, f_t in pairs]
        return {"nst": self.settings.weight * torch.stack(losses).sum()}, {}
