"""The common frame of every distillation method: CE and optional KD on the logits, plus the
method's own named terms computed from both models' outputs; and, for the methods that have one, a
pre-training stage with the method's own losses only (RepDistiller's "init" stage)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from intrakd.config import ConfigError, DistillConfig, setting
from intrakd.data.tensor_data import Batch, Split
from intrakd.losses import kd_loss
from intrakd.models import ModelOutput
from intrakd.objectives.base import StepResult
from intrakd.objectives.temperature import create_temperature

LOGIT_STANDARDIZED_TEMPERATURE = 2.0
"""The logit-standardisation recipe's (Sun et al., CVPR 2024) ``--base-temp 2`` of their README's
CIFAR-100 commands: the temperature of a pair without a published run of its own. The recipe keeps the
method's CE weight (their code since commit 3ec213f: 0.1 for KD and MLKD, DKD's 1.0)."""
LOGIT_STANDARDIZED_WEIGHT = 9.0
"""Their ``--kd-weight 9`` (the KD weight, DKD's two weights' factor, MLKD's weight) of a pair
without a published run of its own."""


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


@dataclass
class InitStageSettings:
    """The settings of a pre-training stage: the base of a method's settings when it has one.

    RepDistiller (``train_student.py``, ``helper/pretrain.py``) trains for ``init_epochs`` = 30 on
    CIFAR-100, with a fresh SGD at a constant rate, before its 240 epochs of distillation."""

    init_epochs: int = setting(30, "epochs of the pre-training stage (the method's own loss only), run before "
                                   "the optim.epochs of the main stage (0: none)", ">= 0")
    init_lr: float | None = setting(None, "constant learning rate of the pre-training stage (unset: optim.lr)",
                                    "> 0")


def linear_warmup(epoch: int, warmup_epochs: int) -> float:
    """Weight factor of a term ramped up linearly: ``(epoch + 1) / warmup_epochs`` up to 1 (``epoch``
    0-based; 1 throughout when ``warmup_epochs`` is 0)."""
    return min((epoch + 1) / warmup_epochs, 1.0) if warmup_epochs > 0 else 1.0


def body_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of ``model`` except its classifier head (the attribute named ``head_name``)."""
    head = f"{model.head_name}."
    return [p for name, p in model.named_parameters() if not name.startswith(head)]


class Distiller(nn.Module):
    """Base of the student objectives: ``ce_weight * CE + kd_weight * KD`` plus :meth:`method_losses`.

    Subclasses build their auxiliary modules (connectors, embedding heads, memories) in
    ``__init__``; as submodules and buffers of the objective they are trained with the student and
    saved in its checkpoint. The teacher is run frozen (no gradients) on the same images.
    """

    num_views = 1
    strong_views = 0
    """How many of the ``num_views`` views (the last ones) are strongly augmented (RandAugment + Cutout)."""
    method = ""
    """Registry name, set by :func:`~intrakd.objectives.registry.register_distiller`."""
    settings_class: ClassVar[type | None] = None
    """Dataclass of the method's own settings, the section ``distill.<method>`` (fields made with
    :func:`intrakd.config.setting`: default, help line, range rule); None: no settings of its own."""
    kind: ClassVar[str]
    """What the method transfers, for the methods table: ``logits``, ``features`` (stage feature
    maps), ``embedding`` (the pooled embedding itself) or ``relations`` (relations among a batch's
    samples). ``logits`` also declares that the method reads nothing of the teacher but its logits, so
    it can distil from a store of them (``teacher_outputs``)."""
    recipe: ClassVar[tuple[float, float]]
    """``(ce_weight, kd_weight)`` of the method's standard recipe (unset weights take these)."""
    takes_learned_temperature: ClassVar[bool] = False
    """Whether the method's logit terms take a learned temperature (``distill.temperature=ctkd``):
    they then read it from :meth:`softmax_temperature`, never from ``self.temperature``."""
    logit_standardized_runs: ClassVar[dict[tuple[str, str], tuple[float, float]]] = {}
    """``(teacher, student) -> (temperature, weight)`` of the logit-standardisation repository's
    published CIFAR-100 run of the pair (its log file name ``method,teacher,student,T,weight``)."""
    teacher_in_graph: ClassVar[bool] = True
    """Whether the method's differentiable terms save the teacher's own output tensors for backward
    (FitNet regresses onto its features, CRD embeds its embedding): its teacher then runs under
    ``no_grad``. False: under ``inference_mode``, which keeps no autograd bookkeeping at all (no version
    counters, no view tracking), for methods whose terms use only tensors computed from the teacher's.
    A learned temperature divides the teacher's logits by a tensor that takes a gradient, so it puts
    every method under ``no_grad`` (:meth:`teacher_mode`)."""
    published: ClassVar[dict[tuple[str, str], float]] = {}
    """CIFAR-100 top-1 (%) the method's paper reports, by ``(teacher, student)``, for its presets."""
    logit_standardized_published: ClassVar[dict[tuple[str, str], float]] = {}
    """The same with logit standardisation (Sun et al., CVPR 2024: their repository's README table)."""
    pair_optim: ClassVar[dict[tuple[str, str], dict[str, Any]]] = {}
    """``(teacher, student) -> optim`` settings (e.g. ``epochs``, ``lr``) of the reference's CIFAR-100
    config of the pair where it departs from the benchmark schedule, for its presets."""
    logit_standardized_pair_optim: ClassVar[dict[tuple[str, str], dict[str, Any]]] = {}
    """The same for the logit-standardised presets (the LS repository's configs); pairs not listed
    take :attr:`pair_optim`'s."""
    label_smoothing = 0.0
    """Of the cross-entropy terms on the true labels (the run sets ``train.label_smoothing``)."""

    def __init__(self, cfg: DistillConfig, student: nn.Module, teacher: nn.Module, data: TrainSetInfo) -> None:
        super().__init__()
        if cfg.ce_weight is None or cfg.kd_weight is None:
            raise ValueError("distill config not validated: ce_weight / kd_weight unset (call cfg.validate())")
        self.ce_weight, self.kd_weight = cfg.ce_weight, cfg.kd_weight
        self.learned_temperature = create_temperature(cfg)
        """The learned temperature (a submodule: trained and checkpointed with the objective), or None."""
        if self.learned_temperature is not None and not self.takes_learned_temperature:
            raise ConfigError(f"distill.temperature={cfg.temperature}: method {self.method!r} takes a fixed "
                             "temperature only")
        self.temperature: float | None = None if self.learned_temperature is not None else cfg.temperature
        """``distill.temperature`` when it is a number (None with a learned temperature)."""
        self.logit_standardize = cfg.logit_standardize
        self.num_classes = data.num_classes
        self.settings: Any = getattr(cfg, self.method) if self.settings_class is not None else None
        """The method's section of ``cfg`` (``cfg.<method>``), None without settings of its own."""
        self.init_epochs, self.init_lr = 0, None
        """The pre-training stage (``train/objective.py``, PretrainStage): none unless the method's
        settings derive from :class:`InitStageSettings`."""
        if isinstance(self.settings, InitStageSettings):
            self.init_epochs, self.init_lr = self.settings.init_epochs, self.settings.init_lr

    @classmethod
    def accepts_pair(cls, teacher_model: str, student_model: str) -> bool:
        """Whether the method can distil ``teacher_model`` into ``student_model`` (registered model
        names); presets are made only for pairs it accepts. Every pair by default."""
        return True

    @classmethod
    def pair_settings(cls, teacher_model: str, student_model: str) -> dict[str, Any]:
        """Settings that the reference recipe tunes for this teacher/student pair (none by default)."""
        return {}

    @classmethod
    def logit_standardized_weights(cls, recipe: dict[str, Any], weight: float) -> dict[str, Any] | None:
        """The distillation weights of the method's logit-standardised recipe for the reference's
        ``--kd-weight`` ``weight``, as ``distill`` keys replacing those of its standard ``recipe``;
        None: the reference publishes no such recipe (no logit terms)."""
        return None

    @classmethod
    def logit_standardized_recipe(cls, recipe: dict[str, Any], teacher_model: str | None = None,
                                  student_model: str | None = None) -> dict[str, Any] | None:
        """The ``distill`` section of the method's recipe with logit standardisation, made from its
        standard ``recipe`` (its CE weight kept): the temperature and weight of the pair's published
        run (:attr:`logit_standardized_runs`), else :data:`LOGIT_STANDARDIZED_TEMPERATURE` and
        :data:`LOGIT_STANDARDIZED_WEIGHT`."""
        temperature, weight = cls.logit_standardized_runs.get(
            (teacher_model, student_model), (LOGIT_STANDARDIZED_TEMPERATURE, LOGIT_STANDARDIZED_WEIGHT))
        weights = cls.logit_standardized_weights(recipe, weight)
        return None if weights is None else {**recipe, "logit_standardize": True, "temperature": temperature,
                                             **weights}

    def set_epoch(self, epoch: int) -> None:
        """Called by the trainer before every epoch (0-based); methods with a schedule override it
        (and call this one: it passes the epoch on to the learned temperature)."""
        if self.learned_temperature is not None:
            self.learned_temperature.set_epoch(epoch)

    def softmax_temperature(self, student_logits: Tensor, teacher_logits: Tensor) -> float | Tensor:
        """The temperature of this step's logit terms: ``distill.temperature``, or the learned
        temperature's output (a 0-dim tensor carrying its gradient)."""
        if self.learned_temperature is None:
            return self.temperature
        return self.learned_temperature(student_logits, teacher_logits)

    def method_losses(self, student: ModelOutput, teacher: ModelOutput,
                      batch: Batch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """The method's own weighted loss terms and values to log (none for plain KD)."""
        return {}, {}

    def init_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """What the pre-training stage trains (methods with :class:`InitStageSettings` define it)."""
        raise NotImplementedError(f"method {self.method!r} has no pre-training stage")

    def init_losses(self, student: ModelOutput, teacher: ModelOutput,
                    batch: Batch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """The weighted loss terms and values to log of the pre-training stage (methods with
        :class:`InitStageSettings` define it)."""
        raise NotImplementedError(f"method {self.method!r} has no pre-training stage")

    def init_step(self, model: nn.Module, batch: Batch, teacher: nn.Module | None = None) -> StepResult:
        """One step of the pre-training stage: :meth:`init_losses` alone (no CE, no KD)."""
        student_out, teacher_out = self.outputs(model, teacher, batch.views[0])
        terms, stats = self.init_losses(student_out, teacher_out, batch)
        return StepResult(terms, student_out.logits, stats)

    def teacher_mode(self) -> contextlib.AbstractContextManager:
        """The autograd mode of the teacher's forward pass: no gradients, and no autograd state at all
        (``inference_mode``) unless the method (:attr:`teacher_in_graph`) or a learned temperature uses
        the teacher's outputs themselves in the graph (``no_grad``). A compiled step (``perf.compile``)
        takes ``no_grad`` too: its graph keeps no per-operation autograd state anyway, and torch.compile
        fails on views of parameters made under ``inference_mode`` (a timm ViT's class token)."""
        if self.teacher_in_graph or self.learned_temperature is not None or torch.compiler.is_compiling():
            return torch.no_grad()
        return torch.inference_mode()

    def outputs(self, model: nn.Module, teacher: nn.Module | None, images: Tensor) -> tuple[ModelOutput, ModelOutput]:
        """``(student, teacher)`` outputs on ``images``; the teacher runs without gradients (:meth:`teacher_mode`)."""
        if teacher is None:
            raise ConfigError(f"distillation method {self.method!r} needs a teacher")
        with self.teacher_mode():
            teacher_out = teacher(images)
        return model(images), teacher_out

    def kd_term(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        """Hinton's KD term, unweighted, at :meth:`softmax_temperature` (logits standardised if so set)."""
        return kd_loss(student_logits, teacher_logits, self.softmax_temperature(student_logits, teacher_logits),
                       self.logit_standardize)

    def forward(self, model: nn.Module, batch: Batch, teacher: nn.Module | None = None) -> StepResult:
        student_out, teacher_out = self.outputs(model, teacher, batch.views[0])
        losses = {"ce": self.ce_weight * F.cross_entropy(student_out.logits.float(), batch.targets,
                                                         label_smoothing=self.label_smoothing)}
        if self.kd_weight > 0:
            losses["kd"] = self.kd_weight * self.kd_term(student_out.logits, teacher_out.logits)
        terms, stats = self.method_losses(student_out, teacher_out, batch)
        losses.update(terms)
        if self.learned_temperature is not None:
            temperature = self.softmax_temperature(student_out.logits, teacher_out.logits)
            stats = {**stats, "temperature": temperature.detach(), **self.learned_temperature.stats()}
        return StepResult(losses, student_out.logits, stats)
