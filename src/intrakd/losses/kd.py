"""The soft-label distillation loss of Hinton et al."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """``T^2 * KL(softmax(t/T) || softmax(s/T))``, averaged over the batch, computed in float32."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    with torch.autocast(device_type=student_logits.device.type, enabled=False):
        log_p_student = F.log_softmax(student_logits.float() / temperature, dim=1)
        log_p_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=1)
        kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2
