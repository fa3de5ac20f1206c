"""Progress a person can follow, in a terminal and in a log file.

A command first says what it will do (:func:`say`, :func:`run_intro`), then reports progress with
:class:`Progress`: a tqdm bar when stderr is a terminal; otherwise (nohup, a cluster job's log) one
line every :data:`LINE_EVERY_SECONDS` or every :data:`LINE_EVERY_FRACTION` of the pass, whichever
comes first (but never more often than every :data:`LINE_MIN_SECONDS`, so short passes stay quiet),
with the step, the caller's values (the running loss), images/s and the time left.
Under torchrun only rank 0 reports.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from tqdm import tqdm

LINE_EVERY_SECONDS = 30.0
"""Seconds between progress lines when the output is not a terminal."""
LINE_EVERY_FRACTION = 0.1
"""Fraction of a pass between progress lines when the output is not a terminal."""
LINE_MIN_SECONDS = 5.0
"""Least seconds between progress lines (a pass shorter than this shows none)."""
POSTFIX_EVERY_SECONDS = 2.0
"""Seconds between refreshes of the values shown on a terminal's bar (reading them may sync a GPU)."""


def is_reporting_rank() -> bool:
    """False on the processes of torchrun other than rank 0 (they stay silent)."""
    return os.environ.get("RANK", "0") == "0"


def say(line: str) -> None:
    """One line to stderr (above a progress bar, if one is shown), from rank 0 only."""
    if is_reporting_rank():
        tqdm.write(line, file=sys.stderr)


def format_duration(seconds: float) -> str:
    """``h:mm:ss`` (or ``m:ss`` under an hour); ``?`` when unknown."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


@dataclass(frozen=True)
class RunPlan:
    """What a training run will do, as its introduction says it."""

    command: str
    label: str
    run_dir: str
    resumed_from: str | None
    """The checkpoint it continues from ('its beginning' when none was written); None: a new run."""
    dataset: str
    train_images: int
    num_classes: int
    eval_split: str
    eval_images: int
    model: str
    steps_per_epoch: int
    epochs: int
    """Epochs of the main stage."""
    batch_size: int
    device: str
    precision: str
    processes: int = 1
    init_epochs: int = 0
    """Epochs of a pre-training stage, before the main stage's."""
    unreadable: int = 0
    """Training images found unreadable and left out (``data.bad_images=skip``), of ``train_images``."""
    inputs: str = ""
    """What each model is fed (normalisation and size), when told."""
    schedule: str = ""
    """The optimiser and learning-rate schedule, in words (empty: not shown)."""
    mixing: str = ""
    """How the training batches are mixed (MixUp, CutMix), in words (empty: not mixed)."""


def run_intro(plan: RunPlan) -> list[str]:
    """What a training run will do, in four lines, one on the models' inputs and one on the schedule when
    told (printed before its first step)."""
    p = plan
    state = f"resuming from {p.resumed_from}" if p.resumed_from else "new run"
    stages = f"{p.init_epochs + p.epochs} epochs ({p.init_epochs} pre-training + {p.epochs})" if p.init_epochs else \
        f"{p.epochs} epochs"
    return [
        f"intrakd {p.command}: {p.label} -> {p.run_dir} ({state})",
        (f"  data    {p.dataset}: {p.train_images - p.unreadable} training images"
         f"{f' ({p.unreadable} unreadable left out)' if p.unreadable else ''}, {p.num_classes} classes; "
         f"evaluated on {p.eval_split}: {p.eval_images} images" + (f"; batches mixed: {p.mixing}" if p.mixing else "")),
        f"  model   {p.model}: {p.steps_per_epoch} steps/epoch x {stages}, batch {p.batch_size}",
        f"  device  {p.device}, precision {p.precision}" + (f", {p.processes} processes" if p.processes > 1 else ""),
        *([f"  input   {p.inputs}"] if p.inputs else []),
        *([f"  optim   {p.schedule}"] if p.schedule else []),
    ]


def eval_intro(command: str, checkpoint: str, dataset: str, split: str, images: int, model: str, device: str) -> str:
    """What an evaluation of a checkpoint will do, in one line."""
    return f"intrakd {command}: {checkpoint} ({model}) on {dataset} {split}: {images} images, device {device}"


class Progress:
    """Progress of one pass of ``total`` steps (from ``initial``), with ``after`` steps still to come
    in later passes (for the time left of the whole run)."""

    def __init__(self, total: int, desc: str, *, initial: int = 0, after: int = 0, enabled: bool = True,
                 stream: TextIO | None = None, terminal: bool | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.desc, self.step, self.after = total, desc, initial, after
        self.stream = stream or sys.stderr
        self.enabled = enabled and is_reporting_rank()
        self.terminal = self.stream.isatty() if terminal is None else terminal
        self.clock = clock
        self.start_step, self.start = initial, clock()
        self.images = 0
        self.last_line = self.last_postfix = self.start
        self.next_fraction_step = self._fraction_mark(initial)
        self.bar = None
        if self.enabled and self.terminal:
            self.bar = tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True,
                            file=self.stream, unit="step")

    def _fraction_mark(self, step: int) -> int:
        every = max(1, round(self.total * LINE_EVERY_FRACTION))
        return (step // every + 1) * every

    def update(self, steps: int = 1, images: int = 0,
               values: Callable[[], dict[str, float]] | None = None) -> None:
        """``steps`` more steps of ``images`` images; ``values`` (read only when shown) adds e.g. the loss."""
        self.step += steps
        self.images += images
        if not self.enabled:
            return
        now = self.clock()
        if self.bar is not None:
            self.bar.update(steps)
            if values is not None and now - self.last_postfix >= POSTFIX_EVERY_SECONDS:
                self.bar.set_postfix({k: f"{v:.4g}" for k, v in values().items()}, refresh=False)
                self.last_postfix = now
            return
        since = now - self.last_line
        if since >= LINE_EVERY_SECONDS or (self.step >= self.next_fraction_step and since >= LINE_MIN_SECONDS):
            self.stream.write(self.line(now, values() if values is not None else {}) + "\n")
            self.stream.flush()
            self.last_line = now
            self.next_fraction_step = self._fraction_mark(self.step)

    def line(self, now: float, values: dict[str, float]) -> str:
        """``desc step 120/781 (15%) loss=2.31 1530 images/s, 0:07:12 left`` (and the run's time left)."""
        elapsed = max(now - self.start, 1e-9)
        done = self.step - self.start_step
        per_step = elapsed / done if done else float("nan")
        shown = "".join(f" {k}={v:.4g}" for k, v in values.items())
        rate = f" {self.images / elapsed:.0f} images/s," if self.images else ""
        left = f" {format_duration((self.total - self.step) * per_step)} left"
        if self.after:
            left += f" (run: {format_duration((self.total - self.step + self.after) * per_step)})"
        percent = 100 * self.step // max(self.total, 1)
        return f"{self.desc} step {self.step}/{self.total} ({percent}%){shown}{rate}{left}"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
