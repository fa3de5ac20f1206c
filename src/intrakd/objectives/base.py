"""What an objective returns to the trainer."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class StepResult:
    """Named, already weighted loss terms (the trainer sums them), values to log, and the logits
    of the first view (for training accuracy)."""

    losses: dict[str, Tensor]
    logits: Tensor
    stats: dict[str, Tensor] = field(default_factory=dict)
