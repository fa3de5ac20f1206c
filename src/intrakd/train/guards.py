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

    :meth:`observe` queues a handful of tiny device operations (however many terms there are) and
    never waits for the device; :meth:`first` reads the record back (one synchronisation), to be
    called before any state is saved.
    """

    def __init__(self) -> None:
        self._records: dict[tuple[str, ...], tuple[Tensor, Tensor]] = {}

    def observe(self, terms: dict[str, Tensor], step: int) -> None:
        """Record the 0-dim ``terms`` of global step ``step`` (0-based)."""
        names = tuple(terms)
        values = torch.stack([v.detach().float() for v in terms.values()])
        if names not in self._records:
            self._records[names] = (torch.full_like(values, -1, dtype=torch.long), torch.zeros_like(values))
        first_step, first_value = self._records[names]
        new = ~torch.isfinite(values) & (first_step < 0)
        self._records[names] = (torch.where(new, step, first_step), torch.where(new, values, first_value))

    def first(self) -> tuple[int, dict[str, float]] | None:
        """``(step, {term: value})`` of the first step with a non-finite term, or None."""
        found: dict[int, dict[str, float]] = {}
        for names, (steps, values) in self._records.items():
            for name, step, value in zip(names, steps.tolist(), values.tolist()):
                if step >= 0:
                    found.setdefault(step, {})[name] = value
        if not found:
            return None
        step = min(found)
        return step, found[step]
