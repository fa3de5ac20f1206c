"""Policies of the loop beside its state: when a checkpoint is due, when a signal stops the run, and
what a NaN or Inf loss term does (stop, or skip the step)."""

from __future__ import annotations

import math
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Self

import torch
from torch import Tensor
from tqdm import tqdm

from intrakd import distributed
from intrakd.config import CheckpointConfig
from intrakd.train.guards import NonFiniteLoss, NonFiniteWatch, all_finite
from intrakd.train.signals import StopSignals
from intrakd.train.state import TrainState

NONFINITE_CHECK_EVERY = 50
"""Steps between reads of the non-finite record (besides the reads before every checkpoint); also
how often data-parallel ranks agree on a timed checkpoint or a stop."""


class CheckpointSchedule:
    """When ``checkpoint.*`` asks for a checkpoint: every ``every_epochs``-th epoch and the last one,
    a new best, every ``every_steps`` steps and every ``every_minutes`` minutes (0 turns either off)."""

    def __init__(self, cfg: CheckpointConfig) -> None:
        self.cfg = cfg
        self.last_save = time.monotonic()

    def saved(self) -> None:
        """Restart the timer (a checkpoint was just written, or training starts)."""
        self.last_save = time.monotonic()

    def timer_due(self) -> bool:
        """``every_minutes`` have passed since the last checkpoint."""
        minutes = self.cfg.every_minutes
        return minutes > 0 and time.monotonic() - self.last_save >= 60.0 * minutes

    def step_due(self, global_step: int) -> bool:
        """``global_step`` (steps done in the whole run) is a multiple of ``every_steps``."""
        return bool(self.cfg.every_steps) and global_step % self.cfg.every_steps == 0

    def epoch_due(self, epochs_done: int, last_epoch: int, is_best: bool) -> bool:
        """A checkpoint is due at the end of this epoch (``epochs_done`` counts it)."""
        return is_best or epochs_done % self.cfg.every_epochs == 0 or epochs_done == last_epoch


class StopPolicy:
    """Between two steps: whether a checkpoint is due (:class:`CheckpointSchedule`) and whether
    SIGTERM/SIGINT asked the run to stop (:class:`StopSignals`, recording them while entered).

    Data-parallel ranks decide together every ``NONFINITE_CHECK_EVERY`` steps (clock and signals are
    rank-local); a checkpoint every ``every_steps`` steps needs no agreement.
    """

    def __init__(self, cfg: CheckpointConfig) -> None:
        self.schedule = CheckpointSchedule(cfg)
        self.signals = StopSignals()

    def __enter__(self) -> Self:
        self.signals.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.signals.__exit__(*exc)

    def after_step(self, global_step: int) -> tuple[bool, bool]:
        """``(save, stop)`` after global step ``global_step`` (steps done in the whole run)."""
        timed = self.schedule.timer_due()
        asked = self.signals.signum is not None
        if distributed.is_distributed():
            timed, asked = (distributed.any_across_ranks([timed, asked])
                            if global_step % NONFINITE_CHECK_EVERY == 0 else (False, False))
        return timed or self.schedule.step_due(global_step), asked

    def asked(self) -> bool:
        """Whether any rank got a stop signal (one collective under data parallelism)."""
        return distributed.any_across_ranks([self.signals.signum is not None])[0]

    @property
    def signum(self) -> int:
        """The signal that asked; SIGTERM for a rank that got none and stops with its peers."""
        return self.signals.signum or signal.SIGTERM


class NonFinitePolicy:
    """What the loop does about NaN or Inf loss terms (``train.skip_nonfinite_steps``).

    Every applied step's terms are recorded on the device (:class:`NonFiniteWatch`, no host sync) and
    read back by :meth:`check` every ``NONFINITE_CHECK_EVERY`` steps and before every checkpoint: a
    non-finite term stops the run (:class:`NonFiniteLoss`) before the state it produced is saved.
    With ``limit > 0`` each step's terms are checked before it is applied (one host sync): a step
    with a non-finite term is not applied and the buffers it changed are put back, up to ``limit``
    such steps over the whole run.

    Args:
        limit: ``train.skip_nonfinite_steps``.
        buffers: the model's and objective's buffers (batch-norm statistics, the feature cache).
        where: names a global step in words ('epoch 2, step 5/21 (global step 26)').
        name: the run's name in the warning lines.
        resume: the command line that resumes the run.
    """

    def __init__(self, limit: int, buffers: list[Tensor], where: Callable[[int], str], name: str,
                 resume: str) -> None:
        self.limit, self.buffers, self.where, self.name, self.resume = limit, buffers, where, name, resume
        self.watch = NonFiniteWatch()

    def snapshot(self) -> list[Tensor] | None:
        """Copies of the buffers before a step, when steps may be skipped (else None)."""
        return [b.detach().clone() for b in self.buffers] if self.limit else None

    def skip(self, saved: list[Tensor] | None, terms: dict[str, Tensor], state: TrainState) -> bool:
        """Whether the step whose terms are ``terms`` must not be applied (its buffers then put back
        from ``saved`` and counted in ``state``); raises :class:`NonFiniteLoss` past the limit."""
        if saved is None or all_finite(terms):
            return False
        with torch.no_grad():
            for buffer, value in zip(self.buffers, saved):
                buffer.copy_(value)
        state.skipped_steps += 1
        state.meter.skipped += 1
        values = {name: v.item() for name, v in terms.items() if not math.isfinite(v.item())}
        where = self.where(state.global_step)
        if state.skipped_steps > self.limit:
            raise NonFiniteLoss(
                f"non-finite loss at {where}: {_show(values)}; that is {state.skipped_steps} such steps, more than "
                f"train.skip_nonfinite_steps={self.limit}. The run stopped; its last good checkpoint is "
                f"{state.last_checkpoint or 'none (nothing was saved yet)'}"
            )
        tqdm.write(f"[{self.name}] warning: skipped the step at {where}: {_show(values)} "
                   f"({state.skipped_steps} of at most {self.limit})", file=sys.stderr)
        return True

    def observe(self, terms: dict[str, Tensor], global_step: int) -> None:
        """Record an applied step's terms (no host synchronisation)."""
        self.watch.observe(terms, global_step)

    def check(self, last_checkpoint: Path | None) -> None:
        """Raise :class:`NonFiniteLoss` naming the first step and the terms that were NaN or Inf."""
        found = self.watch.first()
        if found is None:
            return
        step, values = found
        if last_checkpoint is None:
            raise NonFiniteLoss(
                f"non-finite loss at {self.where(step)}: {_show(values)}. The run stopped before anything was "
                "saved, so there is nothing to resume: run the same command again with a smaller optim.lr, or "
                "with train.skip_nonfinite_steps=N to skip up to N such steps")
        raise NonFiniteLoss(
            f"non-finite loss at {self.where(step)}: {_show(values)}. The run stopped without saving the "
            f"state this produced; its last good checkpoint is {last_checkpoint}. "
            f"To skip such steps, resume with: {self.resume} train.skip_nonfinite_steps=N"
        )


def _show(values: dict[str, float]) -> str:
    return ", ".join(f"{name}={value}" for name, value in values.items())
