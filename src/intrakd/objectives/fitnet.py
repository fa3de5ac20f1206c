"""FitNets (Romero et al., ICLR 2015): a connector regresses the student's "guided" stage feature onto
the teacher's "hint" stage feature; the loss is their mean squared error. The connector is RepDistiller's
and mdistiller's ``ConvReg`` (:func:`~intrakd.objectives.stages.conv_regressor`: a 1x1 convolution with bias,
BatchNorm and ReLU at equal sizes)."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from intrakd.config import ConfigError, DistillConfig, setting
from intrakd.data.tensor_data import Batch
from intrakd.models import ModelOutput, probe
from intrakd.objectives.distiller import Distiller, TrainSetInfo
from intrakd.objectives.registry import ReferenceDifferences, register_distiller
from intrakd.objectives.repdistiller_figures import REPDISTILLER_CIFAR100_TOP1
from intrakd.objectives.stages import conv_regressor


@dataclass
class FitNetSettings:
    """FitNets (Romero et al., ICLR 2015): regress a student stage onto the teacher's through a connector."""

    hint_weight: float = setting(100.0, "weight of the hint (mean squared error) term", ">= 0")
    hint_layer: int = setting(2, "index of the stage feature used by both models (earliest first; may be "
                                  "negative)")


REFERENCE = ReferenceDifferences(
    "RepDistiller: models/util.py (ConvReg), distiller_zoo/FitNet.py; mdistiller: "
    "mdistiller/distillers/FitNet.py")
"""The reference code this method follows, and its deliberate differences from it."""


@register_distiller("fitnet", REFERENCE)
class FitNetObjective(Distiller):
    """FitNets (Romero et al., ICLR 2015): regress a student stage onto the teacher's through a connector."""

    kind = "features"
    published = REPDISTILLER_CIFAR100_TOP1["fitnet"]
    settings_class = FitNetSettings
    recipe = (1.0, 0.0)

    def __init__(self, cfg: DistillConfig, student: nn.Module, teacher: nn.Module, data: TrainSetInfo) -> None:
        super().__init__(cfg, student, teacher, data)
        layer = self.settings.hint_layer
        s_features = probe(student, data.input_shape).features
        t_features = probe(teacher, data.input_shape).features
        for who, features in (("student", s_features), ("teacher", t_features)):
            if not -len(features) <= layer < len(features):
                raise ConfigError(f"distill.fitnet.hint_layer={layer}, but the {who} has {len(features)} stage "
                                 f"features (valid: {-len(features)} to {len(features) - 1})")
        self.connector = conv_regressor(s_features[layer].shape[1:], t_features[layer].shape[1:], "FitNet")

    def method_losses(self, student: ModelOutput, teacher: ModelOutput,
                      batch: Batch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        layer = self.settings.hint_layer
        hint = F.mse_loss(self.connector(student.features[layer]).float(), teacher.features[layer].float())
        return {"fitnet": self.settings.hint_weight * hint}, {}
