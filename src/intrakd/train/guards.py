"""Numerical faults: NaN or Inf in a loss term, found without a host synchronisation per step."""

from __future__ import annotations

import torch
from torch import Tensor


class NonFiniteLoss(FloatingPointError):
    """A loss term was NaN or Inf; the run stopped before saving the state it produced."""


def all_finite(terms: dict[str, Tensor]) -> bool:
    """Whether every term is finite (one host synchronisation)."""
    return bool(torch.isfinite(torch.stack([v.detach().float() for v in terms.values()])).all())


class NonFiniteWatch:
    """Remembers, on the terms' device, the first step at which each loss term was not finite.

    :meth:`observe` queues a few tiny device operations and never waits for the device;
    :meth:`first` reads the record back (one synchronisation), to be called before any state is saved.
    """

    def __init__(self) -> None:
        self._first: dict[str, tuple[Tensor, Tensor]] = {}

    def observe(self, terms: dict[str, Tensor], step: int) -> None:
        """Record the 0-dim ``terms`` of global step ``step`` (0-based)."""
        for name, value in terms.items():
            value = value.detach().float()
            if name not in self._first:
                self._first[name] = (torch.full((), -1, dtype=torch.long, device=value.device),
                                     torch.zeros((), device=value.device))
            first_step, first_value = self._first[name]
            new = ~torch.isfinite(value) & (first_step < 0)
            self._first[name] = (torch.where(new, step, first_step), torch.where(new, value, first_value))

    def first(self) -> tuple[int, dict[str, float]] | None:
        """``(step, {term: value})`` of the first step with a non-finite term, or None."""
        if not self._first:
            return None
        steps = torch.stack([s for s, _ in self._first.values()]).tolist()
        bad = [s for s in steps if s >= 0]
        if not bad:
            return None
        step = min(bad)
        values = {name: v.item() for (name, (_, v)), s in zip(self._first.items(), steps) if s == step}
        return step, values
