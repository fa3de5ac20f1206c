"""Flow of solution procedure (Yim, Joo, Bae & Kim, CVPR 2017): the student copies the teacher's
FSP matrices, the Gram matrices between consecutive stage features.

For two features ``F1 [B, C1, H, W]`` and ``F2 [B, C2, H, W]`` (the larger map average-pooled to the
smaller's size first), ``G[b, i, j] = sum_{h,w} F1[b, i, h, w] F2[b, j, h, w] / (H W)`` (the paper's
eq. 2). The loss of a pair is the mean of ``(G_student - G_teacher)^2`` over its ``B * C1 * C2``
entries; the term is ``weight`` times the sum over consecutive pairs of every stage feature.

As in RepDistiller (``train_student.py`` and ``helper/pretrain.py``, ``distiller_zoo/FSP.py``) the
loss only initialises: it trains the student's body for ``init_epochs`` (30) before the main stage,
which is then cross-entropy alone (plus KD with ``distill.kd_weight``) -- the paper's two stages. The
student and the teacher need the same number of stage features with the same channel counts
(RepDistiller refuses other pairs too: its table of different architectures has no FSP row).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from intrakd.config import ConfigError, DistillConfig, setting
from intrakd.data.tensor_data import Batch
from intrakd.models import ModelOutput, create_model, stage_channels
from intrakd.objectives.distiller import Distiller, InitStageSettings, TrainSetInfo, body_parameters
from intrakd.objectives.registry import ReferenceDifferences, register_distiller
from intrakd.objectives.repdistiller_figures import REPDISTILLER_CIFAR100_TOP1
from intrakd.objectives.stages import pool_to_smaller


def fsp_matrix(lower: Tensor, upper: Tensor) -> Tensor:
    """``[B, C1, C2]`` FSP matrix of two ``[B, C, H, W]`` features, in float32."""
    with torch.autocast(device_type=lower.device.type, enabled=False):
        lower, upper = (f.flatten(2) for f in pool_to_smaller(lower.float(), upper.float()))
        return lower @ upper.transpose(1, 2) / lower.shape[2]


def fsp_loss(student_features: tuple[Tensor, ...], teacher_features: tuple[Tensor, ...]) -> Tensor:
    """Sum over consecutive pairs of stage features of the mean squared FSP-matrix difference."""
    losses = [(fsp_matrix(s1, s2) - fsp_matrix(t1, t2)).pow(2).mean()
              for s1, s2, t1, t2 in zip(student_features, student_features[1:], teacher_features, teacher_features[1:])]
    return torch.stack(losses).sum()


@dataclass
class FSPSettings(InitStageSettings):
    """Flow of solution procedure (Yim et al., CVPR 2017): initialise the student on the teacher's FSP matrices."""

    weight: float = setting(1.0, "weight of the FSP term of the pre-training stage", ">= 0")


REFERENCE = ReferenceDifferences("RepDistiller: distiller_zoo/FSP.py, helper/pretrain.py")
"""The reference code this method follows, and its deliberate differences from it."""


@register_distiller("fsp", REFERENCE)
class FSPObjective(Distiller):
    """Flow of solution procedure (Yim et al., CVPR 2017): pre-training on Gram matrices between stages."""

    kind = "features"
    published = REPDISTILLER_CIFAR100_TOP1["fsp"]
    teacher_in_graph = False
    settings_class = FSPSettings
    recipe = (1.0, 0.0)

    def __init__(self, cfg: DistillConfig, student: nn.Module, teacher: nn.Module, data: TrainSetInfo) -> None:
        super().__init__(cfg, student, teacher, data)
        s_channels, t_channels = stage_channels(student, data.input_shape), stage_channels(teacher, data.input_shape)
        if not _fsp_compatible(s_channels, t_channels):
            raise ConfigError(f"FSP compares the student's and the teacher's Gram matrices between consecutive stages, "
                             f"so both need the same stage channels (at least two stages), but the student has "
                             f"{list(s_channels)} and the teacher {list(t_channels)}")

    @classmethod
    def accepts_pair(cls, teacher_model: str, student_model: str) -> bool:
        return _fsp_compatible(_registered_stage_channels(student_model), _registered_stage_channels(teacher_model))

    def init_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """The student's body (not its classifier), as RepDistiller's init stage."""
        return body_parameters(model)

    def init_losses(self, student: ModelOutput, teacher: ModelOutput,
                    batch: Batch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        return {"fsp": self.settings.weight * fsp_loss(student.features, teacher.features)}, {}


def _fsp_compatible(student_channels: tuple[int, ...], teacher_channels: tuple[int, ...]) -> bool:
    return student_channels == teacher_channels and len(student_channels) >= 2


@functools.cache
def _registered_stage_channels(model_name: str) -> tuple[int, ...]:
    """The stage channels of a registered model, built on the meta device (no memory, no weights)."""
    with torch.device("meta"):
        model = create_model(model_name, num_classes=10)
    return stage_channels(model, (3, 32, 32))
