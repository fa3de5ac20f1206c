"""Distilling knowledge via knowledge review, ReviewKD (Chen et al., CVPR 2021).

The student's levels, deepest first, pass through attention-based fusion (ABF) modules: each maps its
level to ``mid`` channels (1x1 convolution + BN), fuses it with the previous (deeper) ABF's fused map
upsampled to its size, weighted by two attention maps computed from both (1x1 convolution + sigmoid),
resizes the result to the teacher's level (nearest) and maps it to the teacher's channels (3x3
convolution + BN). The hierarchical context loss (HCL) compares each output with the teacher's level:
the mean squared error of the full maps (weight 1) and of their ``l x l`` average-pooled versions for
``l`` in 4, 2, 1 smaller than the map (weights 1/2, 1/4, 1/8 in turn), divided by the sum of the weights
used; it is summed over the levels. The term is ``weight * min((epoch + 1) / warmup_epochs, 1) * HCL``.

Levels (mdistiller's ``ReviewKD``): the stage features after the first one of both models, aligned
from the end to the shorter list, then the pooled embedding as a ``1x1`` map. Channel counts and sizes
come from one probe of each model, ``mid = min(512, student embedding width)``, and maps are resized to
the teacher's sizes as they come (any input size works). Defaults: mdistiller's CIFAR-100 recipe
(``configs/cifar100/reviewkd.yaml``: weight 5; ``engine/cfg.py``: 20 warm-up epochs); the weights the
authors' CIFAR-100 script (``ReviewKD/CIFAR-100/script/reviewKD.sh``) sets per pair are in
:data:`PAIR_WEIGHT`.

What differs from the references, and why. The teacher's levels are its stage outputs
(``ModelOutput.features``, after the ReLU for most of intrakd's models), where the references take its
pre-ReLU responses, which intrakd's model contract does not return. The levels are chosen by one rule
for every architecture, where the authors list them per student (``build_review_kd``); on their
CIFAR-100 pairs the rule gives the same levels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from intrakd.config import DistillConfig, setting
from intrakd.data.tensor_data import Batch
from intrakd.models import ModelOutput, probe
from intrakd.objectives.distiller import Distiller, TrainSetInfo, linear_warmup
from intrakd.objectives.registry import Difference, ReferenceDifferences, register_distiller

PAIR_WEIGHT: dict[tuple[str, str], float] = {
    ("resnet32x4", "ShuffleV2"): 8.0,
    ("resnet56", "resnet20"): 0.6,
    ("resnet110", "resnet32"): 1.0,
}
"""``(teacher, student) -> weight`` of the authors' CIFAR-100 script where it differs from 5."""

HCL_POOL_SIZES = (4, 2, 1)
"""The pooled sizes of the hierarchical context loss, each used when smaller than the map."""

MAX_MID_CHANNELS = 512
"""The ABFs' width is the student's embedding width, up to this."""


def hcl_loss(student: list[Tensor], teacher: list[Tensor]) -> Tensor:
    """The hierarchical context loss summed over the levels (see the module docstring)."""
    total = student[0].new_zeros(())
    for fs, ft in zip(student, teacher):
        loss, weight, weights = F.mse_loss(fs, ft), 1.0, 1.0
        for size in HCL_POOL_SIZES:
            if size >= min(fs.shape[-2:]):
                continue
            weight /= 2.0
            pooled_s, pooled_t = F.adaptive_avg_pool2d(fs, size), F.adaptive_avg_pool2d(ft, size)
            loss = loss + weight * F.mse_loss(pooled_s, pooled_t)
            weights += weight
        total = total + loss / weights
    return total


class ABF(nn.Module):
    """Attention-based fusion of one student level with the fused map of the deeper levels."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool) -> None:
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 1, bias=False),
                                    nn.BatchNorm2d(mid_channels))
        self.output = nn.Sequential(nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False),
                                    nn.BatchNorm2d(out_channels))
        self.attention = nn.Conv2d(2 * mid_channels, 2, 1) if fuse else None
        nn.init.kaiming_uniform_(self.reduce[0].weight, a=1)
        nn.init.kaiming_uniform_(self.output[0].weight, a=1)

    def forward(self, x: Tensor, deeper: Tensor | None, out_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """``(output, fused)``: the map compared with the teacher's level (``out_size``, the teacher's
        channels) and the fused ``mid``-channel map handed to the next, shallower level."""
        fused = self.reduce(x)
        if self.attention is not None and deeper is not None:
            deeper = F.interpolate(deeper, size=fused.shape[-2:], mode="nearest")
            weights = torch.sigmoid(self.attention(torch.cat([fused, deeper], dim=1)))
            fused = fused * weights[:, :1] + deeper * weights[:, 1:]
        if tuple(fused.shape[-2:]) != tuple(out_size):
            fused = F.interpolate(fused, size=out_size, mode="nearest")
        return self.output(fused), fused


def review_levels(output: ModelOutput, count: int) -> list[Tensor]:
    """The last ``count`` stage features after the first one, then the embedding as a 1x1 map."""
    stages = list(output.features[1:])[len(output.features) - 1 - count:]
    return [*stages, output.embedding[:, :, None, None]]


@dataclass
class ReviewKDSettings:
    """ReviewKD (Chen et al., CVPR 2021): fused student levels regress the teacher's, deepest first."""

    weight: float = setting(5.0, "weight of the hierarchical context loss (0.6 to 8 depending on the pair)",
                            ">= 0")
    warmup_epochs: int = setting(20, "the ReviewKD term's weight ramps up linearly over this many epochs "
                                     "(0: none)", ">= 0")


REFERENCE = ReferenceDifferences(
    "mdistiller: mdistiller/distillers/ReviewKD.py",
    (
        Difference(
            "the teacher's levels are its stage outputs (after the ReLU for most models), not its pre-ReLU "
            "responses",
            "the model contract returns stage outputs",
            "targets are non-negative; the student fits them the same way"),
    ))
"""The reference code this method follows, and its deliberate differences from it."""


@register_distiller("reviewkd", REFERENCE)
class ReviewKDObjective(Distiller):
    """ReviewKD (Chen et al., CVPR 2021): fused student levels regress the teacher's, deepest first."""

    kind = "features"
    settings_class = ReviewKDSettings
    recipe = (1.0, 0.0)

    def __init__(self, cfg: DistillConfig, student: nn.Module, teacher: nn.Module, data: TrainSetInfo) -> None:
        super().__init__(cfg, student, teacher, data)
        s_out, t_out = probe(student, data.input_shape), probe(teacher, data.input_shape)
        self.stage_count = min(len(s_out.features), len(t_out.features)) - 1
        s_levels, t_levels = review_levels(s_out, self.stage_count), review_levels(t_out, self.stage_count)
        mid = min(MAX_MID_CHANNELS, s_levels[-1].shape[1])
        self.abfs = nn.ModuleList(ABF(s.shape[1], mid, t.shape[1], fuse=i < len(s_levels) - 1)
                                  for i, (s, t) in enumerate(zip(s_levels, t_levels)))
        """One ABF per level, earliest first; the deepest (the embedding) fuses nothing."""
        self.warmup = 0.0
        self.set_epoch(0)

    @classmethod
    def pair_settings(cls, teacher_model: str, student_model: str) -> dict[str, Any]:
        weight = PAIR_WEIGHT.get((teacher_model, student_model))
        return {} if weight is None else {"weight": weight}

    def set_epoch(self, epoch: int) -> None:
        """The ReviewKD term's weight factor: ``(epoch + 1) / warmup_epochs`` up to 1."""
        self.warmup = linear_warmup(epoch, self.settings.warmup_epochs)

    def review(self, student_levels: list[Tensor], teacher_levels: list[Tensor]) -> list[Tensor]:
        """The ABF outputs, earliest level first, computed from the deepest level up."""
        outputs: list[Tensor] = []
        fused: Tensor | None = None
        for abf, x, target in zip(reversed(self.abfs), reversed(student_levels), reversed(teacher_levels)):
            out, fused = abf(x, fused, tuple(target.shape[-2:]))
            outputs.insert(0, out)
        return outputs

    def method_losses(self, student: ModelOutput, teacher: ModelOutput,
                      batch: Batch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        teacher_levels = [t.float() for t in review_levels(teacher, self.stage_count)]
        outputs = self.review(review_levels(student, self.stage_count), teacher_levels)
        with torch.autocast(device_type=student.logits.device.type, enabled=False):
            loss = hcl_loss([o.float() for o in outputs], teacher_levels)
        stats = {"reviewkd_warmup": torch.tensor(self.warmup)}  # a host scalar: no copy to the device
        return {"reviewkd": self.settings.weight * self.warmup * loss}, stats
