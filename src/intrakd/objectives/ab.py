"""Activation boundaries (Heo, Lee, Yun & Choi, AAAI 2019): the student learns where the teacher's
neurons switch on and off.

For a stage feature, ``T`` the teacher's and ``S = r(S_student)`` the student's mapped by a connector
``r`` (RepDistiller's ``ConvReg`` without its ReLU: convolution + batch norm,
:func:`~intrakd.objectives.stages.conv_regressor`), each element contributes a squared hinge with margin ``m``:
``(S + m)^2`` where the teacher's neuron is off (``T <= 0``) and ``S > -m``, ``(S - m)^2`` where it is
on (``T > 0``) and ``S < m`` (the paper's eq. 6, the "alternative" loss of its code). The term is
``weight * sum_i 2^(i - n + 1) * sum(hinge_i) / B`` over the ``n`` stage pairs from ``first_stage``
on (``objectives/stages.py``: RepDistiller's pairing), the last pair at weight 1, each earlier one at
half the next.

As in RepDistiller (``train_student.py`` and ``helper/pretrain.py``, ``distiller_zoo/AB.py``,
``models/util.py`` ``Connector``) this loss only initialises: it trains the student's body and the
connectors for ``init_epochs`` (30) before the main stage, which is then cross-entropy alone (plus KD
with ``distill.kd_weight``). Defaults are RepDistiller's CIFAR-100 ones: the stages after the stem,
margin 1, weight 3/1000 (the paper's code's scale), the init stage at the run's learning rate.

Unlike RepDistiller, which reads pre-activation features and uses no connector where the shapes
agree, the student's side here is the model contract's stage feature (after its ReLU for most
models) through a connector at every stage, so that it can take both signs; the teacher's on/off
pattern ``T > 0`` is the same before and after a ReLU. On a Wide ResNet teacher (pre-activation
blocks: a stage output is followed by a BatchNorm, then the ReLU) it is the sign of the stage output,
where RepDistiller's ``preact`` features take it after that BatchNorm.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from intrakd.config import DistillConfig, setting
from intrakd.data.tensor_data import Batch
from intrakd.models import ModelOutput
from intrakd.objectives.distiller import Distiller, InitStageSettings, TrainSetInfo, body_parameters
from intrakd.objectives.registry import Difference, ReferenceDifferences, register_distiller
from intrakd.objectives.repdistiller_figures import REPDISTILLER_CIFAR100_TOP1
from intrakd.objectives.stages import conv_regressor, probe_stage_pairs, stage_pairs


def ab_hinge(student: Tensor, teacher: Tensor, margin: float) -> Tensor:
    """Sum over the elements of the squared hinge on the teacher's activation boundary, in float32."""
    with torch.autocast(device_type=student.device.type, enabled=False):
        s, on = student.float(), teacher > 0
        off_violation = (s + margin).pow(2) * (~on & (s > -margin))
        on_violation = (s - margin).pow(2) * (on & (s < margin))
        return (off_violation + on_violation).sum()


@dataclass
class ABSettings(InitStageSettings):
    """Activation boundaries (Heo et al., AAAI 2019): initialise the student on the teacher's on/off pattern."""

    weight: float = setting(0.003, "weight of the activation-boundary term of the pre-training stage", ">= 0")
    margin: float = setting(1.0, "margin of the squared hinge around the boundary", "> 0")
    first_stage: int = setting(1, "first stage feature used (the benchmark skips the stem at index 0)", ">= 0")


REFERENCE = ReferenceDifferences(
    "RepDistiller: distiller_zoo/AB.py, helper/pretrain.py",
    (
        Difference(
            "the student's stage output (after its ReLU) goes through a connector at every stage, where "
            "RepDistiller reads pre-activation features without a connector when the shapes agree",
            "the model contract returns post-ReLU stage outputs, which cannot take both signs",
            "the teacher's on/off pattern is the same; the student side gains a connector"),
        Difference(
            "on a Wide ResNet teacher the on/off pattern is the sign of the stage output, where RepDistiller "
            "takes it after the BatchNorm that follows (its preact features)",
            "the model contract returns stage outputs, not pre-activation responses",
            "another on/off pattern on WRN teachers (wrn_40_2 pairs)"),
    ))
"""The reference code this method follows, and its deliberate differences from it."""


@register_distiller("ab", REFERENCE)
class ABObjective(Distiller):
    """Activation boundaries (Heo et al., AAAI 2019): pre-training on the teacher's neuron on/off pattern."""

    kind = "features"
    published = REPDISTILLER_CIFAR100_TOP1["ab"]
    teacher_in_graph = False
    settings_class = ABSettings
    recipe = (1.0, 0.0)

    def __init__(self, cfg: DistillConfig, student: nn.Module, teacher: nn.Module, data: TrainSetInfo) -> None:
        super().__init__(cfg, student, teacher, data)
        pairs = probe_stage_pairs(student, teacher, data.input_shape, self.settings.first_stage, "ab")
        self.connectors = nn.ModuleList(conv_regressor(s.shape[1:], t.shape[1:], "AB", relu=False) for s, t in pairs)

    def init_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """The student's body (not its classifier) and the connectors, as RepDistiller's init stage."""
        return body_parameters(model) + list(self.connectors.parameters())

    def init_losses(self, student: ModelOutput, teacher: ModelOutput,
                    batch: Batch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        pairs = stage_pairs(student.features, teacher.features, self.settings.first_stage)
        count, total, agreement = len(pairs), [], []
        for i, (connect, (s_feature, t_feature)) in enumerate(zip(self.connectors, pairs, strict=True)):
            mapped = connect(s_feature)
            total.append(2.0 ** (i - count + 1) * ab_hinge(mapped, t_feature, self.settings.margin))
            agreement.append(((mapped > 0) == (t_feature > 0)).float().mean())
        loss = self.settings.weight * torch.stack(total).sum() / batch.labels.shape[0]
        # the share of neurons on the same side of the boundary as the teacher's, over the stages
        return {"ab": loss}, {"ab_agreement": torch.stack(agreement).mean().detach()}
