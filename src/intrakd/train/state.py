"""The state that exact resume saves: one :class:`TrainState`, written as one checkpoint.

It holds the states of the run's stateful objects (weights, objective state such as the feature
cache, optimisers, learning-rate schedule), the random generators of every rank, the epoch meter,
the position ``(epoch, step)`` (whole epochs done and steps done in the next one) and the run's
record so far (best accuracy, last evaluation, metric lines, wall time, skipped steps). A run resumed
from any checkpoint ends bit for bit as an uninterrupted run on the same device with deterministic
kernels.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from intrakd import distributed
from intrakd.models.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    CheckpointStore,
    CheckpointWriteError,
    check_format,
)
from intrakd.train.meter import EpochMeter
from intrakd.train.rng import capture_rng_state, restore_rng_state


@dataclass
class RunInfo:
    """What a checkpoint records about the run besides weights."""

    kind: str
    """'teacher' or 'student'."""
    model_name: str
    num_classes: int
    config: dict[str, Any]
    eval_split: str
    provenance: dict[str, Any] = field(default_factory=dict)
    """Facts about the inputs a resumed run must find unchanged (data size, the teacher's sha256)."""
    label: str = ""
    """What the run is called in its log lines ('enriched teacher'); ``kind`` when empty."""
    class_names: list[str] = field(default_factory=list)
    """The name of every label, in label order (``intrakd predict`` shows them)."""

    @property
    def name(self) -> str:
        return self.label or self.kind


class TrainState:
    """Position, record, meter and the stateful objects of one run; :meth:`save` and :meth:`load`.

    ``stateful`` maps checkpoint keys to objects with ``state_dict``/``load_state_dict`` (model,
    objective, optimisers, schedule; add e.g. a gradient scaler there). Besides what it saves it
    knows whether anything changed since the last save (:attr:`dirty`), the last checkpoint written
    (:attr:`last_checkpoint`) and the clock of the run's wall time (:meth:`tick`).
    """

    def __init__(self, info: RunInfo, stateful: dict[str, Any]) -> None:
        self.info, self.stateful = info, stateful
        self.epoch = self.step = self.global_step = 0
        self.best_acc = float("-inf")
        self.last_eval: dict[str, float] = {}
        self.metrics_lines: list[str] = []
        self.wall_seconds = 0.0
        self.skipped_steps = 0
        self.meter = EpochMeter()
        self.dirty = False
        """Whether a step or an epoch's end changed the state since it was last saved or loaded."""
        self.last_checkpoint: Path | None = None
        self._mark = time.perf_counter()

    def advance(self) -> None:
        """One step was taken."""
        self.step += 1
        self.global_step += 1
        self.dirty = True

    def restart_clock(self) -> None:
        """Count the wall time from now on (training starts or continues)."""
        self._mark = time.perf_counter()

    def tick(self, training: bool) -> None:
        """Add the time since the last tick to the wall clock (and to the epoch's training time)."""
        now = time.perf_counter()
        if training:
            self.meter.seconds += now - self._mark
        self.wall_seconds += now - self._mark
        self._mark = now

    def position_text(self, steps_per_epoch: int) -> str:
        """Where the loop stands, in words ('in epoch 3 after step 17/390', 'after epoch 2')."""
        if self.step:
            return f"in epoch {self.epoch + 1} after step {self.step}/{steps_per_epoch}"
        return f"after epoch {self.epoch}" if self.epoch else "before the first step"

    def state_dict(self, steps_per_epoch: int) -> dict[str, Any]:
        """Everything a resumed run needs to continue exactly from the current position (a collective
        under data parallelism: every rank's random state is gathered)."""
        info = self.info
        return {
            "format": CHECKPOINT_FORMAT,
            "kind": info.kind,
            "model_name": info.model_name,
            "num_classes": info.num_classes,
            "class_names": info.class_names,
            "config": info.config,
            "provenance": info.provenance,
            **{name: obj.state_dict() for name, obj in self.stateful.items()},
            "epoch": self.epoch,
            "step": self.step,
            "global_step": self.global_step,
            "steps_per_epoch": steps_per_epoch,
            "best_acc": self.best_acc,
            "last_eval": dict(self.last_eval),
            "metrics_lines": list(self.metrics_lines),
            "wall_seconds": self.wall_seconds,
            "skipped_steps": self.skipped_steps,
            "meter": self.meter.state_dict(),
            "rng": distributed.gather_objects(capture_rng_state()),
        }

    def load_state_dict(self, state: dict[str, Any], steps_per_epoch: int, device: torch.device) -> None:
        """Continue from a :meth:`state_dict` (a checkpoint of a run with the same configuration)."""
        check_format(state)
        if state["steps_per_epoch"] != steps_per_epoch:
            raise CheckpointError(f"the checkpoint was taken with {state['steps_per_epoch']} steps per epoch, the "
                                  f"data now gives {steps_per_epoch}: the training data changed")
        missing = [name for name in self.stateful if name not in state]
        if missing:
            raise CheckpointError(f"the checkpoint holds no state for {', '.join(missing)}")
        for name, obj in self.stateful.items():
            obj.load_state_dict(state[name])
        self.epoch, self.step, self.global_step = state["epoch"], state["step"], state["global_step"]
        self.best_acc, self.last_eval = state["best_acc"], dict(state["last_eval"])
        self.metrics_lines = list(state["metrics_lines"])
        self.wall_seconds, self.skipped_steps = state["wall_seconds"], state["skipped_steps"]
        self.meter.load_state_dict(state["meter"], device)
        restore_rng_state(state["rng"][distributed.rank()])
        self.dirty = False

    def save(self, store: CheckpointStore, steps_per_epoch: int, best: bool = False, write: bool = True) -> Path:
        """Write the state at the current position into ``store`` (``best``: point ``best.pt`` at it);
        ``write=False`` (data-parallel ranks other than 0) takes part in gathering it and writes nothing."""
        state = self.state_dict(steps_per_epoch)  # every rank: the random states are gathered
        if not write:
            self.dirty = False
            return store.folder / store.file_name(self.epoch, self.step)
        try:
            path = store.save(state, self.epoch, self.step, best)
        except CheckpointWriteError as err:
            previous = f"the previous checkpoint {self.last_checkpoint} is intact" if self.last_checkpoint else \
                "no earlier checkpoint exists"
            raise CheckpointWriteError(err.errno, f"{err.strerror}; {previous}") from err
        self.last_checkpoint, self.dirty = path, False
        return path

    def load(self, state: dict[str, Any], path: Path | None, steps_per_epoch: int, device: torch.device) -> None:
        """Continue from the checkpoint ``state`` read from ``path``."""
        self.load_state_dict(state, steps_per_epoch, device)
        self.last_checkpoint = path
