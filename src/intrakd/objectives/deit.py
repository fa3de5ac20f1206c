"""DeiT's distillation token (Touvron et al., "Training data-efficient image transformers & distillation
through attention", ICML 2021).

The Vision Transformer student has a second token beside its class token, with its own head. The class
token's head learns the labels; the distillation token's head learns from the teacher:

* ``hard`` (the paper's best): cross-entropy with the teacher's top class, ``CE(z_dist, argmax z_t)``;
* ``soft``: ``T^2 KL(softmax(z_t / T) || softmax(z_dist / T))`` summed over the batch and the classes
  and divided by their product ``B * C``, as the reference code does (``/ outputs_kd.numel()``).

The loss is ``ce_weight * CE(z_cls, y) + token_weight * term``, DeiT's ``(1 - alpha) * base + alpha *
distillation`` with ``alpha = 0.5``. The student predicts the mean of its two heads' scores, in training
(what is logged) and evaluation alike. A timm ViT without a distillation token is given one when the
method is built (:func:`intrakd.models.timm_models.add_distillation_token`); timm's
``deit_*_distilled_*`` architectures have one. The method reads only the teacher's logits, so it can
distil from a store of them (``teacher_outputs``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from intrakd.config import ConfigError, DistillConfig, setting
from intrakd.data.tensor_data import Batch
from intrakd.models.timm_models import PREFIX, add_distillation_token
from intrakd.objectives.base import StepResult
from intrakd.objectives.distiller import Distiller, TrainSetInfo
from intrakd.objectives.registry import Difference, ReferenceDifferences, register_distiller


def deit_token_term(dist_logits: Tensor, teacher_logits: Tensor, variant: str, temperature: float) -> Tensor:
    """The distillation token's unweighted term (see the module's description), in float32."""
    with torch.autocast(device_type=dist_logits.device.type, enabled=False):
        student, teacher = dist_logits.float(), teacher_logits.float()
        if variant == "hard":
            return F.cross_entropy(student, teacher.argmax(dim=1))
        kl = F.kl_div(F.log_softmax(student / temperature, dim=1), F.log_softmax(teacher / temperature, dim=1),
                      reduction="sum", log_target=True)
        return kl * temperature**2 / student.numel()


@dataclass
class DeiTSettings:
    """DeiT (Touvron et al., ICML 2021): a ViT student's distillation token learns from the teacher."""

    variant: Literal["hard", "soft"] = setting(
        "hard", "what the distillation token learns: the teacher's top class (hard, the paper's best) or its "
                "softened predictions (soft, at soft_temperature)")
    token_weight: float = setting(0.5, "weight of the distillation token's term (DeiT's --distillation-alpha 0.5; "
                                       "the class token's CE takes ce_weight, 1 - alpha)", ">= 0")
    soft_temperature: float = setting(1.0, "temperature of the soft variant (DeiT's --distillation-tau 1)", "> 0")


REFERENCE = ReferenceDifferences(
    "facebookresearch/deit: losses.py (DistillationLoss), models.py (DistilledVisionTransformer), main.py",
    (
        Difference(
            "the reference's mixup 0.8, CutMix 1.0 (one of the two per batch) and label smoothing 0.1 are off "
            "unless set (data.mixup, data.cutmix, train.label_smoothing: the class token then learns the "
            "smoothed mixed targets from the mixed images the teacher sees, as in the reference); a blend is "
            "rounded to uint8 pixels, and each image is mixed with the one before it (timm: the batch reversed)",
            "the method is the loss and the token; augmentation and smoothing are a run's settings",
            "without them the augmentation-driven part of DeiT's ImageNet gains is not reproduced"),
        Difference(
            "the training schedule is intrakd's optim section (SGD by default), not DeiT's 300-epoch AdamW "
            "recipe (lr 5e-4 x batch / 512, weight decay 0.05, RandAugment, random erasing, repeated "
            "augmentation, stochastic depth)",
            "the method is the loss and the token; the schedule is a run's settings",
            "set optim.* to approach the published ImageNet figures"),
        Difference(
            "a timm ViT built without a distillation token gets one added (token, its position embedding and "
            "head drawn as the reference initialises them); its other weights are kept",
            "the reference builds its distilled models with the token from the start",
            "none on the loss; a pretrained ViT starts with a fresh distillation head"),
    ))
"""The reference code this method follows, and its deliberate differences from it."""


@register_distiller("deit", REFERENCE)
class DeiTObjective(Distiller):
    """DeiT: the class token learns the labels, a distillation token the teacher's hard or soft labels."""

    kind = "logits"
    teacher_in_graph = False
    settings_class = DeiTSettings
    recipe = (0.5, 0.0)

    def __init__(self, cfg: DistillConfig, student: nn.Module, teacher: nn.Module, data: TrainSetInfo) -> None:
        super().__init__(cfg, student, teacher, data)
        try:
            add_distillation_token(student)
        except ConfigError as err:
            raise ConfigError(f"distill.method=deit: {err}") from None

    @classmethod
    def accepts_pair(cls, teacher_model: str, student_model: str) -> bool:
        """A ViT student only: timm models."""
        return student_model.startswith(PREFIX)

    def forward(self, model: nn.Module, batch: Batch, teacher: nn.Module | None = None) -> StepResult:
        student_out, teacher_out = self.outputs(model, teacher, batch.views[0])
        class_logits, dist_logits = student_out.heads
        s = self.settings
        losses = {"ce": self.ce_weight * F.cross_entropy(class_logits.float(), batch.targets,
                                                         label_smoothing=self.label_smoothing),
                  "deit": s.token_weight * deit_token_term(dist_logits, teacher_out.logits, s.variant,
                                                           s.soft_temperature)}
        if self.kd_weight > 0:
            losses["kd"] = self.kd_weight * self.kd_term(student_out.logits, teacher_out.logits)
        return StepResult(losses, student_out.logits, {})
