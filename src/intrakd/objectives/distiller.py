"""The common frame of every distillation method: CE and optional KD on the logits, plus the
method's own named terms computed from both models' outputs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from intrakd.config import DistillConfig
from intrakd.data.tensor_data import Batch, Split
from intrakd.losses import kd_loss
from intrakd.models import ModelOutput
from intrakd.objectives.base import StepResult


@dataclass(frozen=True)
class TrainSetInfo:
    """What a method may need to know of the training split when it is built."""

    num_classes: int
    labels: Tensor
    """``[N]`` labels in split order: ``Batch.indices`` index them (per-sample memories)."""
    input_shape: tuple[int, ...]
    """``(C, H, W)`` of one image (to size connectors from a dummy forward pass)."""

    @classmethod
    def from_split(cls, split: Split) -> TrainSetInfo:
        """Read the class count and labels of ``split``, and the shape of its first image."""
        images, _ = next(iter(split.eval_batches(1, torch.device("cpu"))))
        return cls(split.num_classes, split.labels.cpu(), tuple(images.shape[1:]))


class Distiller(nn.Module):
    """Base of the student objectives: ``ce_weight * CE + kd_weight * KD`` plus :meth:`method_losses`.

    Subclasses build their auxiliary modules (connectors, embedding heads, memories) in
    ``__init__``; as submodules and buffers of the objective they are trained with the student and
    saved in its checkpoint. The teacher is run frozen (no gradients) on the same images.
    """

    num_views = 1
    method = ""
    """Registry name, set by :func:`~intrakd.objectives.registry.register_distiller`."""
    settings_class: ClassVar[type | None] = None
    """Dataclass of the method's own settings, the section ``distill.<method>`` (fields made with
    :func:`intrakd.config.setting`: default, help line, range rule); None: no settings of its own."""
    recipe: ClassVar[tuple[float, float]]
    """``(ce_weight, kd_weight)`` of the method's standard recipe (unset weights take these)."""

    def __init__(self, cfg: DistillConfig, student: nn.Module, teacher: nn.Module, data: TrainSetInfo) -> None:
        super().__init__()
        if cfg.ce_weight is None or cfg.kd_weight is None:
            raise ValueError("distill config not validated: ce_weight / kd_weight unset (call cfg.validate())")
        self.ce_weight, self.kd_weight, self.temperature = cfg.ce_weight, cfg.kd_weight, cfg.temperature
        self.num_classes = data.num_classes
        self.settings: Any = getattr(cfg, self.method) if self.settings_class is not None else None
        """The method's section of ``cfg`` (``cfg.<method>``), None without settings of its own."""

    @classmethod
    def pair_settings(cls, teacher_model: str, student_model: str) -> dict[str, Any]:
        """Settings that the reference recipe tunes for this teacher/student pair (none by default)."""
        return {}

    def set_epoch(self, epoch: int) -> None:
        """Called by the trainer before every epoch (0-based); methods with a schedule override it."""

    def method_losses(self, student: ModelOutput, teacher: ModelOutput,
                      batch: Batch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """The method's own weighted loss terms and values to log (none for plain KD)."""
        return {}, {}

    def forward(self, model: nn.Module, batch: Batch, teacher: nn.Module | None = None) -> StepResult:
        if teacher is None:
            raise ValueError(f"distillation method {self.method!r} needs a teacher")
        images = batch.views[0]
        with torch.no_grad():
            teacher_out = teacher(images)
        student_out = model(images)
        losses = {"ce": self.ce_weight * F.cross_entropy(student_out.logits.float(), batch.labels)}
        if self.kd_weight > 0:
            losses["kd"] = self.kd_weight * kd_loss(student_out.logits, teacher_out.logits, self.temperature)
        terms, stats = self.method_losses(student_out, teacher_out, batch)
        losses.update(terms)
        return StepResult(losses, student_out.logits, stats)
