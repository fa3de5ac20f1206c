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
    every epoch."""

    num_views: int
    """Augmented views of each image the objective wants in a batch."""
    strong_views: int
    """How many of those views (the last ones) are strongly augmented (RandAugment + Cutout)."""

    def __call__(self, model: nn.Module, batch: Batch, teacher: nn.Module | None = None) -> StepOutput: ...
