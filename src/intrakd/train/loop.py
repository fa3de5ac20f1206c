"""The training loop. It sums the named losses an objective returns and knows no method by name.

The loop's position is ``(epoch, step)``: whole epochs done and steps done in the next one. A
checkpoint holds everything that position depends on (weights, optimiser, schedule, objective state
such as the feature cache, random generators, the epoch's running sums, the metric lines written so
far, best-so-far), so a run resumed from any checkpoint ends bit for bit as an uninterrupted run on
the same device with deterministic kernels.
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from intrakd import distributed
from intrakd.config import RUN_COMMANDS, CheckpointConfig, OptimConfig, TrainConfig
from intrakd.data.tensor_data import Batch, Batches, Split
from intrakd.models.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    CheckpointStore,
    CheckpointWriteError,
    check_format,
    write_atomic,
)
from intrakd.progress import Progress
from intrakd.train.accel import PerfSettings
from intrakd.train.evaluate import evaluate
from intrakd.train.guards import NonFiniteLoss, NonFiniteWatch, all_finite
from intrakd.train.meter import EpochMeter
from intrakd.train.policies import NONFINITE_CHECK_EVERY, CheckpointSchedule
from intrakd.train.rng import capture_rng_state, restore_rng_state
from intrakd.train.signals import Interrupted, StopSignals
from intrakd.train.sinks import TensorBoardLog, console_line


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

    @property
    def name(self) -> str:
        return self.label or self.kind


def build_optimizer(params: Iterable[nn.Parameter], cfg: OptimConfig, **options: Any) -> torch.optim.SGD:
    """SGD with momentum and weight decay (the benchmark recipe); ``options`` pick its implementation."""
    return torch.optim.SGD(list(params), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                           **options)


class Trainer:
    """Epoch loop: :meth:`train_step`, log ``metrics.jsonl``, evaluate, :meth:`save_checkpoint`.

    Extension points: :meth:`train_step` is the one optimisation step (mixed precision, gradient
    scaling, distributed variants wrap or replace it); :attr:`stateful` maps checkpoint keys to
    objects with ``state_dict``/``load_state_dict`` (add e.g. a gradient scaler there);
    :meth:`save_checkpoint` and :meth:`log_epoch` are the only writers of the run folder during
    training; :attr:`rank` picks this process's random state in a checkpoint.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        objective: nn.Module,
        train_batches: Batches,
        eval_set: Split,
        optim: OptimConfig,
        run_dir: Path,
        info: RunInfo,
        teacher: nn.Module | None = None,
        eval_batch_size: int = 512,
        checkpoint: CheckpointConfig | None = None,
        train: TrainConfig | None = None,
        perf: PerfSettings | None = None,
        sync_batchnorm: bool = False,
    ) -> None:
        self.model, self.objective, self.teacher = model, objective, teacher
        self.train_batches, self.eval_set, self.eval_batch_size = train_batches, eval_set, eval_batch_size
        self.optim_cfg, self.run_dir, self.info = optim, Path(run_dir), info
        self.checkpoint_cfg = checkpoint or CheckpointConfig()
        self.train_cfg = train or TrainConfig()
        trainable = [p for p in list(model.parameters()) + list(objective.parameters()) if p.requires_grad]
        # speed settings (train/accel.py) and data parallelism (intrakd/distributed.py; identity in one process)
        self.perf = perf or PerfSettings.plain(next(model.parameters()).device)
        self.optimizer = build_optimizer(trainable, optim, **self.perf.optimizer_options())
        self.train_model = distributed.wrap_model(model, sync_batchnorm)
        distributed.broadcast_module(objective)
        self.objective_params = [p for p in objective.parameters() if p.requires_grad]
        self.step_objective = self.perf.compile_step(objective)
        self.writer = distributed.is_main()
        """Rank 0 alone writes the run folder."""
        self.board: TensorBoardLog | None = None
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, optim.milestones, optim.lr_decay)
        self.stateful: dict[str, Any] = {
            "model": model, "objective": objective, "optimizer": self.optimizer, "scheduler": self.scheduler,
        }
        # the objective's pre-training stage (train/objective.py, PretrainStage), when it declares one
        self.init_epochs = int(getattr(objective, "init_epochs", 0))
        self.epochs = self.init_epochs + optim.epochs
        """Epochs of the whole run: the pre-training stage's, then the main stage's ``optim.epochs``."""
        self.in_init_stage = False
        if self.init_epochs:
            self.init_params = list(objective.init_parameters(model))
            init_lr = optim.lr if objective.init_lr is None else objective.init_lr
            self.init_optimizer = build_optimizer(self.init_params, dataclasses.replace(optim, lr=init_lr),
                                                  **self.perf.optimizer_options())
            self.stateful["init_optimizer"] = self.init_optimizer
            self.step_init = self.perf.compile_step(objective.init_step)
            model_params = {id(p) for p in model.parameters()}
            self.init_trains_model = any(id(p) in model_params for p in self.init_params)
        self.store = CheckpointStore(self.run_dir / "checkpoints", self.checkpoint_cfg.keep_last)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.rank = distributed.rank()
        self.epoch = self.step = self.global_step = 0
        self.best_acc = float("-inf")
        self.last_eval: dict[str, float] = {}
        self.metrics_lines: list[str] = []
        self.wall_seconds = 0.0
        self.skipped_steps = 0
        self.meter = EpochMeter()
        self.watch = NonFiniteWatch()
        self.last_checkpoint: Path | None = None
        self._signals = StopSignals()
        self._buffers = [b for module in (model, objective) for b in module.buffers()]
        self._dirty = False
        self._mark = time.perf_counter()
        self.schedule = CheckpointSchedule(self.checkpoint_cfg)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ----------------------------------------------------------------------------------------- steps

    def train_step(self, batch: Batch) -> None:
        """One optimisation step on ``batch``: forward through the objective, sum the named terms,
        backward, update. With ``train.skip_nonfinite_steps > 0`` a step whose terms are not all
        finite is not applied (and the buffers it changed are put back)."""
        saved = [b.detach().clone() for b in self._buffers] if self.train_cfg.skip_nonfinite_steps else None
        if self.perf.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()  # CUDA graphs: the previous step's outputs are done with
        init = self.in_init_stage
        with self.perf.autocast():
            if init:  # the unwrapped model: its gradients are averaged below with the other pre-trained ones
                result = self.step_init(self.model, batch, self.teacher)
            else:
                result = self.step_objective(self.train_model, batch, self.teacher)
        loss = torch.stack([v.float() for v in result.losses.values()]).sum()
        terms = {"loss": loss, **result.losses}
        if saved is not None and not all_finite(terms):
            self._skip_step(saved, terms)
            return
        self.optimizer.zero_grad(set_to_none=True)  # every trainable parameter, the pre-trained ones included
        loss.backward()
        distributed.average_gradients(self.init_params if init else self.objective_params)
        (self.init_optimizer if init else self.optimizer).step()
        self.watch.observe(terms, self.global_step)
        self.meter.add(loss, result, batch.labels)

    def _skip_step(self, saved: list[Tensor], terms: dict[str, Tensor]) -> None:
        with torch.no_grad():
            for buffer, value in zip(self._buffers, saved):
                buffer.copy_(value)
        self.skipped_steps += 1
        self.meter.skipped += 1
        values = {name: v.item() for name, v in terms.items() if not math.isfinite(v.item())}
        where = self._where(self.global_step)
        limit = self.train_cfg.skip_nonfinite_steps
        if self.skipped_steps > limit:
            raise NonFiniteLoss(
                f"non-finite loss at {where}: {_show(values)}; that is {self.skipped_steps} such steps, more than "
                f"train.skip_nonfinite_steps={limit}. The run stopped; its last good checkpoint is "
                f"{self.last_checkpoint or 'none (nothing was saved yet)'}"
            )
        tqdm.write(f"[{self.info.kind}] warning: skipped the step at {where}: {_show(values)} "
                   f"({self.skipped_steps} of at most {limit})", file=sys.stderr)

    def _where(self, global_step: int) -> str:
        epoch, step = divmod(global_step, len(self.train_batches))
        return f"epoch {epoch + 1}, step {step + 1}/{len(self.train_batches)} (global step {global_step + 1})"

    def check_finite(self) -> None:
        """Raise :class:`NonFiniteLoss` naming the first step and the terms that were NaN or Inf."""
        found = self.watch.first()
        if found is None:
            return
        step, values = found
        raise NonFiniteLoss(
            f"non-finite loss at {self._where(step)}: {_show(values)}. The run stopped without saving the "
            f"state this produced; its last good checkpoint is {self.last_checkpoint or 'none (nothing was saved)'}. "
            f"To skip such steps, resume with: intrakd {RUN_COMMANDS[self.info.kind]} --resume {self.run_dir} "
            "train.skip_nonfinite_steps=N"
        )

    # ----------------------------------------------------------------------------------------- epochs

    def fit(self, extra_summary: dict[str, Any] | None = None) -> dict[str, Any]:
        """Train from the current position to the last epoch; write the run folder; return the summary
        (plus ``extra_summary``). Raises :class:`Interrupted` after saving on SIGTERM/SIGINT, and
        :class:`NonFiniteLoss` without saving when a loss term is not finite."""
        if self.writer:
            write_atomic(self.metrics_path, "".join(line + "\n" for line in self.metrics_lines).encode())
            # optional extra: TensorBoard event files when tensorboard is installed
            self.board = TensorBoardLog(self.run_dir)
        self._mark = time.perf_counter()
        self.schedule.saved()
        try:
            with self._signals:
                while self.epoch < self.epochs:
                    self._train_epoch()
                    self._end_epoch()
                    self._stop_if_asked()
        finally:
            if self.board is not None:
                self.board.close()
        self._tick(training=False)
        summary = {
            "kind": self.info.kind, "model": self.info.model_name, "eval_split": self.info.eval_split,
            "final_acc": self.last_eval["acc"], "best_acc": self.best_acc, "epochs": self.epochs,
            "wall_seconds": self.wall_seconds, **(extra_summary or {}),
        }
        if self.init_epochs:
            summary["init_epochs"] = self.init_epochs
        if self.train_cfg.skip_nonfinite_steps:
            summary["skipped_steps"] = self.skipped_steps
        summary.update(getattr(self.train_batches, "run_stats", dict)())
        if self.writer:
            write_atomic(self.run_dir / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
        return summary

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over ``train_batches`` as epoch ``epoch``, without checkpoints, logs, evaluation or
        a change of the run's position (benchmarks, warm-up); returns the pass's logged means."""
        self._begin_epoch(epoch)
        self.meter.reset()
        start = time.perf_counter()
        for batch in self.train_batches:
            self.train_step(batch)
        self.check_finite()
        self.meter.seconds = time.perf_counter() - start
        metrics = self.meter.summary()
        self.meter.reset()
        return metrics

    def _train_epoch(self) -> None:
        steps = len(self.train_batches)
        if self.step < steps:
            self._begin_epoch(self.epoch, self.step)
            stage = " (pre-training)" if self.in_init_stage else ""
            progress = Progress(steps, f"[{self.info.name}] epoch {self.epoch + 1}/{self.epochs}{stage}",
                                initial=self.step, after=steps * (self.epochs - self.epoch - 1),
                                enabled=self.writer)
            for batch in self.train_batches:
                self.train_step(batch)
                self.step += 1
                self.global_step += 1
                self._dirty = True
                if self.global_step % NONFINITE_CHECK_EVERY == 0:
                    self.check_finite()
                self._checkpoint_or_stop()
                progress.update(1, batch.labels.shape[0] * distributed.world_size(), self._running_loss)
            progress.close()
        self._tick(training=True)

    def _begin_epoch(self, epoch: int, step: int = 0) -> None:
        """The stage and training mode, and the data order and objective schedule of ``epoch`` from
        ``step`` on."""
        self.in_init_stage = epoch < self.init_epochs
        self.model.train(not self.in_init_stage or self.init_trains_model)
        self.objective.train()
        if step:
            self.train_batches.set_epoch(epoch, step)
        else:  # the start of an epoch: the protocol's default start (benchmarks' Batches take only the epoch)
            self.train_batches.set_epoch(epoch)
        if hasattr(self.objective, "set_epoch"):  # objectives with a schedule over epochs
            self.objective.set_epoch(epoch)

    def _checkpoint_or_stop(self) -> None:
        """Save when a checkpoint is due, stop when a signal asked to. Data-parallel ranks decide
        together every ``NONFINITE_CHECK_EVERY`` steps (clock and signals are rank-local)."""
        timed = self.schedule.timer_due()
        asked = self._signals.signum is not None
        if distributed.is_distributed():
            timed, asked = (distributed.any_across_ranks([timed, asked])
                            if self.global_step % NONFINITE_CHECK_EVERY == 0 else (False, False))
        if timed or self.schedule.step_due(self.global_step):
            self.save_checkpoint()
        self._stop_if_asked(asked)

    def _end_epoch(self) -> None:
        self.check_finite()
        metrics = self.meter.summary()
        if self.train_cfg.skip_nonfinite_steps:
            metrics["skipped_steps"] = self.meter.skipped
        metrics.update(getattr(self.train_batches, "epoch_stats", dict)())  # e.g. skipped_images
        init = self.epoch < self.init_epochs
        lr = (self.init_optimizer if init else self.optimizer).param_groups[0]["lr"]
        if not init:  # the main stage's schedule counts its own epochs only
            self.scheduler.step()
        self.last_eval = evaluate(self.model, self.eval_set, self.eval_batch_size)
        split = self.info.eval_split
        stage = {"stage": "init" if init else "main"} if self.init_epochs else {}
        record = {"epoch": self.epoch + 1, **stage, "lr": lr, **metrics,
                  f"{split}_acc": self.last_eval["acc"], f"{split}_loss": self.last_eval["loss"]}
        is_best = not init and self.last_eval["acc"] > self.best_acc  # the best student of the main stage
        if not init:
            self.best_acc = max(self.best_acc, self.last_eval["acc"])
        self.epoch, self.step = self.epoch + 1, 0
        self.meter.reset()
        self._dirty = True
        self.log_epoch(record)
        if self.schedule.epoch_due(self.epoch, self.epochs, is_best):
            self.save_checkpoint(best=is_best)

    def log_epoch(self, record: dict[str, Any]) -> None:
        """Append one epoch's record to ``metrics.jsonl`` (and to the lines a checkpoint keeps)."""
        line = json.dumps(record)
        self.metrics_lines.append(line)
        if not self.writer:
            return
        with self.metrics_path.open("a") as f:
            f.write(line + "\n")
        if self.board is not None:
            self.board.log(record, record["epoch"])
        tqdm.write(console_line(self.info.name, record, self.epochs, self.info.eval_split), end="\n")

    def _running_loss(self) -> dict[str, float]:
        """The epoch's mean loss so far (read when a progress line is shown)."""
        meter = self.meter
        return {"loss": meter.sums["loss"].item() / meter.steps} if meter.steps and "loss" in meter.sums else {}

    def _tick(self, training: bool) -> None:
        """Add the time since the last tick to the wall clock (and to the epoch's training time)."""
        now = time.perf_counter()
        if training:
            self.meter.seconds += now - self._mark
        self.wall_seconds += now - self._mark
        self._mark = now

    def _stop_if_asked(self, asked: bool | None = None) -> None:
        """Save and raise :class:`Interrupted` if a signal came (``asked``: the ranks' joint answer)."""
        if asked is None:
            asked = distributed.any_across_ranks([self._signals.signum is not None])[0]
        if not asked:
            return
        signum = self._signals.signum or signal.SIGTERM  # a rank that got no signal stops with its peers
        if self._dirty:
            self.save_checkpoint()
        saved = f"state saved in {self.last_checkpoint}" if self.last_checkpoint else "no step was taken yet"
        raise Interrupted(
            signum,
            f"stopped by {signal.Signals(signum).name} {self.position_text()}; {saved}. "
            f"Continue with: intrakd {RUN_COMMANDS[self.info.kind]} --resume {self.run_dir}",
        )

    def position_text(self) -> str:
        """Where the loop stands, in words ('in epoch 3 after step 17/390', 'after epoch 2')."""
        if self.step:
            return f"in epoch {self.epoch + 1} after step {self.step}/{len(self.train_batches)}"
        return f"after epoch {self.epoch}" if self.epoch else "before the first step"

    # ----------------------------------------------------------------------------------- checkpoints

    def save_checkpoint(self, best: bool = False) -> Path:
        """Write the whole training state at the current position (and point ``best.pt`` at it).

        Non-finite losses are checked first, so a bad state never replaces a good checkpoint.
        """
        self.check_finite()
        self._tick(training=self.step > 0)
        state = self.state_dict()  # every rank: the random states are gathered
        if not self.writer:
            self._dirty = False
            self.schedule.saved()
            self._tick(training=False)
            return self.store.folder / self.store.file_name(self.epoch, self.step)
        try:
            path = self.store.save(state, self.epoch, self.step, best)
        except CheckpointWriteError as err:
            previous = f"the previous checkpoint {self.last_checkpoint} is intact" if self.last_checkpoint else \
                "no earlier checkpoint exists"
            raise CheckpointWriteError(err.errno, f"{err.strerror}; {previous}") from err
        self.last_checkpoint, self._dirty = path, False
        self.schedule.saved()
        self._tick(training=False)
        return path

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue exactly from the current position."""
        return {
            "format": CHECKPOINT_FORMAT,
            "kind": self.info.kind,
            "model_name": self.info.model_name,
            "num_classes": self.info.num_classes,
            "config": self.info.config,
            "provenance": self.info.provenance,
            **{name: obj.state_dict() for name, obj in self.stateful.items()},
            "epoch": self.epoch,
            "step": self.step,
            "global_step": self.global_step,
            "steps_per_epoch": len(self.train_batches),
            "best_acc": self.best_acc,
            "last_eval": dict(self.last_eval),
            "metrics_lines": list(self.metrics_lines),
            "wall_seconds": self.wall_seconds,
            "skipped_steps": self.skipped_steps,
            "meter": self.meter.state_dict(),
            "rng": distributed.gather_objects(capture_rng_state()),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict` (a checkpoint of a run with the same configuration)."""
        check_format(state)
        if state["steps_per_epoch"] != len(self.train_batches):
            raise CheckpointError(f"the checkpoint was taken with {state['steps_per_epoch']} steps per epoch, the "
                                  f"data now gives {len(self.train_batches)}: the training data changed")
        missing = [name for name in self.stateful if name not in state]
        if missing:
            raise CheckpointError(f"the checkpoint holds no state for {', '.join(missing)}")
        for name, obj in self.stateful.items():
            obj.load_state_dict(state[name])
        self.epoch, self.step, self.global_step = state["epoch"], state["step"], state["global_step"]
        self.best_acc, self.last_eval = state["best_acc"], dict(state["last_eval"])
        self.metrics_lines = list(state["metrics_lines"])
        self.wall_seconds, self.skipped_steps = state["wall_seconds"], state["skipped_steps"]
        self.meter.load_state_dict(state["meter"], self.device)
        restore_rng_state(state["rng"][self.rank])
        self._dirty = False


def _show(values: dict[str, float]) -> str:
    return ", ".join(f"{name}={value}" for name, value in values.items())
