"""Policies of the loop: how often it reads the non-finite record, and when a checkpoint is due."""

from __future__ import annotations

import time

from intrakd.config import CheckpointConfig

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
