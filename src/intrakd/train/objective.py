"""What the training engine expects of an objective: a structural protocol, so that the engine
imports no objective (:mod:`intrakd.objectives` implements it)."""

from __future__ import annotations

from typing import Protocol

from torch import Tensor, nn

from intrakd.data.tensor_data import Batch


class StepOutput(Protocol):
    """One step's result: named, already weighted loss terms (the engine sums them), values to log,
    and the logits of the first view (for training accuracy)."""

    losses: dict[str, Tensor]
    logits: Tensor
    stats: dict[str, Tensor]


class Objective(Protocol):
    """A module that turns a batch into a :class:`StepOutput`; the engine trains its parameters with
    the model's, saves its state with the model's, and calls ``set_epoch`` (when it has one) before
    every epoch with the run's epoch (0-based, pre-training epochs included).

    An objective may declare a pre-training stage (RepDistiller's "init" stage) through
    :class:`PretrainStage`'s members; the engine runs those epochs first (see there)."""

    num_views: int
    """Augmented views of each image the objective wants in a batch."""
    strong_views: int
    """How many of those views (the last ones) are strongly augmented (RandAugment + Cutout)."""

    def __call__(self, model: nn.Module, batch: Batch, teacher: nn.Module | None = None) -> StepOutput: ...


class PretrainStage(Protocol):
    """The optional members of an objective with a pre-training stage.

    With ``init_epochs > 0`` the engine runs that many epochs before the ``optim.epochs`` of the main
    stage, each step calling :meth:`init_step` and updating only :meth:`init_parameters` at the
    constant rate ``init_lr`` (None: ``optim.lr``); how, is :mod:`intrakd.train.stages`."""

    init_epochs: int
    init_lr: float | None

    def init_parameters(self, model: nn.Module) -> list[nn.Parameter]: ...

    def init_step(self, model: nn.Module, batch: Batch, teacher: nn.Module | None = None) -> StepOutput: ...
