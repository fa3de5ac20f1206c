"""Student objective of classic knowledge distillation: ``ce_weight * CE + kd_weight * T^2 KL``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from intrakd.config import KDConfig
from intrakd.data.tensor_data import Batch
from intrakd.losses import kd_loss
from intrakd.objectives.base import StepResult
from intrakd.objectives.registry import register_distiller


@register_distiller("kd")
class KDObjective(nn.Module):
    """Hinton et al.'s distillation from a frozen teacher's logits."""

    num_views = 1

    def __init__(self, cfg: KDConfig, num_classes: int, student: nn.Module, teacher: nn.Module) -> None:
        super().__init__()
        self.cfg = cfg

    def forward(self, model: nn.Module, batch: Batch, teacher: nn.Module | None = None) -> StepResult:
        if teacher is None:
            raise ValueError("KD needs a teacher")
        images = batch.views[0]
        with torch.no_grad():
            teacher_logits = teacher(images).logits
        logits = model(images).logits
        losses = {
            "ce": self.cfg.ce_weight * F.cross_entropy(logits.float(), batch.labels),
            "kd": self.cfg.kd_weight * kd_loss(logits, teacher_logits, self.cfg.temperature),
        }
        return StepResult(losses, logits)
