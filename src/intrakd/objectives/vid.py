"""Variational information distillation (Ahn, Hu, Damianou, Lawrence & Dai, CVPR 2019).

Each paired stage (see :mod:`intrakd.objectives.stages`) gets a regressor of three 1x1 convolutions
(student channels -> teacher channels -> teacher channels -> teacher channels, ReLU between, no bias)
that predicts the mean ``mu`` of a Gaussian over the teacher's feature, and a learned per-channel
variance ``sigma_c^2 = softplus(alpha_c) + eps``. The loss of a stage is the Gaussian negative
log-likelihood without its constant, ``log sigma_c + (t - mu)^2 / (2 sigma_c^2)``, averaged over batch,
channels and positions; the stages are summed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from intrakd.config import ConfigError, DistillConfig, setting
from intrakd.data.tensor_data import Batch
from intrakd.models import ModelOutput
from intrakd.objectives.distiller import Distiller, TrainSetInfo
from intrakd.objectives.registry import ReferenceDifferences, register_distiller
from intrakd.objectives.repdistiller_figures import REPDISTILLER_CIFAR100_TOP1
from intrakd.objectives.stages import pool_to_smaller, probe_stage_pairs, stage_pairs


def regressor(student_channels: int, teacher_channels: int) -> nn.Sequential:
    """The mean predictor of one stage: three bias-free 1x1 convolutions with ReLU between."""
    return nn.Sequential(nn.Conv2d(student_channels, teacher_channels, 1, bias=False), nn.ReLU(),
                         nn.Conv2d(teacher_channels, teacher_channels, 1, bias=False), nn.ReLU(),
                         nn.Conv2d(teacher_channels, teacher_channels, 1, bias=False))


def vid_loss(mean: Tensor, teacher_feature: Tensor, alpha: Tensor, eps: float) -> Tensor:
    """Mean Gaussian negative log-likelihood (without ``log sqrt(2 pi)``) of a ``[B, C, H, W]`` teacher
    feature under the predicted ``mean`` and the variance ``softplus(alpha) + eps`` of each channel."""
    with torch.autocast(device_type=mean.device.type, enabled=False):
        variance = (F.softplus(alpha.float()) + eps)[None, :, None, None]
        error = (mean.float() - teacher_feature.float()).pow(2)
        return 0.5 * (error / variance + variance.log()).mean()


@dataclass
class VIDSettings:
    """Variational information distillation (Ahn et al., CVPR 2019); CIFAR-100 defaults of RepDistiller
    (train_student.py, distiller_zoo/VID.py, scripts/run_cifar_distill.sh: -b 1) and mdistiller
    (mdistiller/engine/cfg.py: VID.LOSS.FEAT_WEIGHT 1, INIT_PRED_VAR 5, EPS 1e-5)."""

    weight: float = setting(1.0, "weight of the negative log-likelihood term (summed over stages)", ">= 0")
    init_variance: float = setting(5.0, "variance of every channel before training", "> 0")
    eps: float = setting(1e-5, "variance floor: variance = softplus(alpha) + eps", "> 0")
    first_stage: int = setting(1, "first stage feature used (the reference skips the stem at index 0)", ">= 0")


REFERENCE = ReferenceDifferences("RepDistiller: distiller_zoo/VID.py")
"""The reference code this method follows, and its deliberate differences from it."""


@register_distiller("vid", REFERENCE)
class VIDObjective(Distiller):
    """Variational information distillation (Ahn et al., CVPR 2019): a Gaussian over each teacher stage."""

    kind = "features"
    published = REPDISTILLER_CIFAR100_TOP1["vid"]
    teacher_in_graph = False
    settings_class = VIDSettings
    recipe = (1.0, 0.0)

    def __init__(self, cfg: DistillConfig, student: nn.Module, teacher: nn.Module, data: TrainSetInfo) -> None:
        super().__init__(cfg, student, teacher, data)
        s = self.settings
        if s.init_variance <= s.eps:
            raise ConfigError(f"distill.vid.init_variance={s.init_variance} must exceed distill.vid.eps={s.eps}")
        pairs = probe_stage_pairs(student, teacher, data.input_shape, s.first_stage, "vid")
        self.regressors = nn.ModuleList(regressor(f_s.shape[1], f_t.shape[1]) for f_s, f_t in pairs)
        alpha = math.log(math.expm1(s.init_variance - s.eps))  # softplus(alpha) + eps = init_variance
        self.alphas = nn.ParameterList(nn.Parameter(torch.full((f_t.shape[1],), alpha)) for _, f_t in pairs)

    def method_losses(self, student: ModelOutput, teacher: ModelOutput,
                      batch: Batch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        losses = []
        pairs = stage_pairs(student.features, teacher.features, self.settings.first_stage)
        for (f_s, f_t), head, alpha in zip(pairs, self.regressors, self.alphas, strict=True):
            f_s, f_t = pool_to_smaller(f_s, f_t)
            losses.append(vid_loss(head(f_s), f_t, alpha, self.settings.eps))
        return {"vid": self.settings.weight * torch.stack(losses).sum()}, {}
