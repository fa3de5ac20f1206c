"""The soft-label distillation loss of Hinton et al., and the logit standardisation of Sun et al."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

STANDARDIZE_EPS = 1e-7
"""Added to the standard deviation (the reference code's value): constant logits standardise to 0."""


def standardize_logits(logits: Tensor) -> Tensor:
    """Each row z-scored (Sun et al., "Logit Standardization in Knowledge Distillation", CVPR 2024):
    ``(z - mean(z)) / (std(z) + eps)`` over the last dimension, with the unbiased standard deviation
    ``sqrt(sum((z - mean(z))^2) / (K - 1))`` of the code that produced the paper's numbers (torch's
    default); the paper's formula writes the population one (``/ K``)."""
    mean = logits.mean(dim=-1, keepdim=True)
    std = logits.std(dim=-1, keepdim=True)
    return (logits - mean) / (std + STANDARDIZE_EPS)


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float | Tensor,
            standardize: bool = False) -> Tensor:
    """``T^2 * KL(softmax(t/T) || softmax(s/T))``, averaged over the batch, computed in float32;
    ``standardize``: each model's logits are first z-scored per sample (:func:`standardize_logits`).
    ``temperature``: a number, or a learned one as a 0-dim tensor, through which the loss is
    differentiable (the ``T^2`` factor included)."""
    if not isinstance(temperature, Tensor) and temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    with torch.autocast(device_type=student_logits.device.type, enabled=False):
        student, teacher = student_logits.float(), teacher_logits.float()
        if standardize:
            student, teacher = standardize_logits(student), standardize_logits(teacher)
        log_p_student = F.log_softmax(student / temperature, dim=1)
        log_p_teacher = F.log_softmax(teacher / temperature, dim=1)
        kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2
