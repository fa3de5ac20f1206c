"""FitNets (Romero et al., ICLR 2015): a connector regresses the student's "guided" stage feature onto
the teacher's "hint" stage feature; the loss is their mean squared error."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from intrakd.config import DistillConfig, setting
from intrakd.data.tensor_data import Batch
from intrakd.models import ModelOutput, probe
from intrakd.objectives.distiller import Distiller, TrainSetInfo
from intrakd.objectives.registry import Difference, ReferenceDifferences, register_distiller


def connector(student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]) -> nn.Sequential:
    """Conv + BN + ReLU mapping a ``[C_s, H_s, W_s]`` feature to ``[C_t, H_t, W_t]``: a 3x3 convolution
    when the sizes agree or the student's is an integer multiple (strided), a transposed convolution
    when the teacher's is an integer multiple of the student's."""
    (c_s, h_s, w_s), (c_t, h_t, w_t) = student_shape, teacher_shape
    if (h_s, w_s) == (h_t, w_t):
        conv: nn.Module = nn.Conv2d(c_s, c_t, 3, padding=1, bias=False)
    elif h_s % h_t == 0 and w_s % w_t == 0 and h_s // h_t == w_s // w_t:
        conv = nn.Conv2d(c_s, c_t, 3, stride=h_s // h_t, padding=1, bias=False)
    elif h_t % h_s == 0 and w_t % w_s == 0 and h_t // h_s == w_t // w_s:
        factor = h_t // h_s
        conv = nn.ConvTranspose2d(c_s, c_t, factor, stride=factor, bias=False)
    else:
        raise ValueError(f"FitNet cannot connect a student feature of spatial size {h_s}x{w_s} to a teacher "
                         f"feature of {h_t}x{w_t}: the sizes must be equal or integer multiples")
    return nn.Sequential(conv, nn.BatchNorm2d(c_t), nn.ReLU(inplace=True))


@dataclass
class FitNetSettings:
    """FitNets (Romero et al., ICLR 2015): regress a student stage onto the teacher's through a connector."""

    hint_weight: float = setting(100.0, "weight of the hint (mean squared error) term", ">= 0")
    hint_layer: int = setting(2, "index of the stage feature used by both models (earliest first; may be "
                                  "negative)")


REFERENCE = ReferenceDifferences(
    "RepDistiller: models/util.py (ConvReg), distiller_zoo/FitNet.py; mdistiller: "
    "mdistiller/distillers/FitNet.py",
    (
        Difference(
            "connector: 3x3 conv without bias at equal sizes, ConvTranspose2d(k=f, stride=f) to upsample",
            "RepDistiller/mdistiller ConvReg uses kernel 1 + s_H - t_H with bias (1x1 at equal sizes) and "
            "ConvTranspose2d(k=4, s=2, p=1) (not yet changed, issue #24)",
            "a larger connector at equal sizes"),
    ))
"""The reference code this method follows, and its deliberate differences from it."""


@register_distiller("fitnet", REFERENCE)
class FitNetObjective(Distiller):
    """FitNets (Romero et al., ICLR 2015): regress a student stage onto the teacher's through a connector."""

    kind = "features"
    settings_class = FitNetSettings
    recipe = (1.0, 0.0)

    def __init__(self, cfg: DistillConfig, student: nn.Module, teacher: nn.Module, data: TrainSetInfo) -> None:
        super().__init__(cfg, student, teacher, data)
        layer = self.settings.hint_layer
        s_features = probe(student, data.input_shape).features
        t_features = probe(teacher, data.input_shape).features
        for who, features in (("student", s_features), ("teacher", t_features)):
            if not -len(features) <= layer < len(features):
                raise ValueError(f"distill.fitnet.hint_layer={layer}, but the {who} has {len(features)} stage "
                                 f"features (valid: {-len(features)} to {len(features) - 1})")
        self.connector = connector(tuple(s_features[layer].shape[1:]), tuple(t_features[layer].shape[1:]))

    def method_losses(self, student: ModelOutput, teacher: ModelOutput,
                      batch: Batch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        layer = self.settings.hint_layer
        hint = F.mse_loss(self.connector(student.features[layer]).float(), teacher.features[layer].float())
        return {"fitnet": self.settings.hint_weight * hint}, {}
