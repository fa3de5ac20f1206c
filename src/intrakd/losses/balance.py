"""Gradient balancing: the weight of an auxiliary loss chosen during training so that its gradient at a
tensor both losses read is a fixed fraction of the main loss's gradient there (``intra.weight=auto``,
docs/auto-lambda.md).

With main loss ``A`` and auxiliary loss ``B`` read from the same tensor ``e`` (the teacher's
embedding), the step's ratio is ``r = ||dA/de|| / ||dB/de||``; it is smoothed over steps with an
exponential moving average (bias-corrected, as Adam's moments) and the weight is
``lambda = target * average(r)``, so that ``||lambda * dB/de|| ~ target * ||dA/de||``. Every operation
stays on the device: no host synchronisation.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

MOMENTUM = 0.98
"""Per-step decay of the ratio's moving average (its memory: about 50 steps)."""
MAX_WEIGHT = 1.0
"""Upper bound of the weight: the auxiliary loss never outweighs the main loss's unit weight."""
_TINY = 1e-30
"""Squared gradient norms at or below this count as no gradient (a step without the auxiliary term)."""


def balanced_weight(average: Tensor, updates: Tensor, main_sq: Tensor, aux_sq: Tensor, target: float,
                    momentum: float = MOMENTUM, max_weight: float = MAX_WEIGHT) -> tuple[Tensor, Tensor, Tensor]:
    """One step of the rule: ``(weight, average, updates)`` after seeing the squared gradient norms
    ``main_sq`` and ``aux_sq`` (0-d tensors, summed over the batch and over data-parallel ranks).

    ``average`` is the uncorrected moving average of the ratio and ``updates`` the number of steps
    that fed it. A step whose auxiliary gradient is zero (the gate passed nothing) or whose norms are
    not finite leaves both unchanged. The weight is 0 before the first such step and always lies in
    ``[0, max_weight]``.
    """
    main_sq, aux_sq = main_sq.double(), aux_sq.double()
    usable = (aux_sq > _TINY) & torch.isfinite(main_sq) & torch.isfinite(aux_sq)
    ratio = torch.sqrt(main_sq.clamp_min(0) / aux_sq.clamp_min(_TINY))
    average = torch.where(usable, momentum * average + (1 - momentum) * ratio, average)
    updates = updates + usable.long()
    correction = 1 - torch.pow(torch.full_like(average, momentum), updates.double())
    smoothed = torch.where(updates > 0, average / correction.clamp_min(_TINY), torch.zeros_like(average))
    weight = (target * smoothed).clamp(0.0, max_weight)
    return weight.float(), average, updates


class GradientBalancedWeight(nn.Module):
    """:func:`balanced_weight` with its state (moving average, update count) as buffers, so that the
    weight in force is saved in checkpoints and a resumed run continues exactly."""

    def __init__(self, target: float) -> None:
        super().__init__()
        self.target = target
        self.register_buffer("average", torch.zeros((), dtype=torch.float64))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    def forward(self, main_sq: Tensor, aux_sq: Tensor) -> Tensor:
        """The weight for this step, given this step's squared gradient norms (updates the state)."""
        weight, average, updates = balanced_weight(self.average, self.updates, main_sq.detach(), aux_sq.detach(),
                                                   self.target)
        self.average.copy_(average)
        self.updates.copy_(updates)
        return weight


def squared_gradient_norm(loss: Tensor, wrt: Tensor) -> Tensor:
    """``||d loss / d wrt||^2`` in float32, without touching any parameter's ``.grad`` (the graph is
    kept for the step's backward pass); 0 when ``loss`` does not depend on ``wrt``."""
    if not (loss.requires_grad and wrt.requires_grad):
        return torch.zeros((), device=wrt.device)
    (grad,) = torch.autograd.grad(loss, wrt, retain_graph=True, allow_unused=True)
    if grad is None:
        return torch.zeros((), device=wrt.device)
    return grad.float().pow(2).sum()
