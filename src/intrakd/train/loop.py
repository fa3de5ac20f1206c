"""The training loop. It sums the named losses an objective returns and knows no method by name.

An epoch, read from :meth:`Trainer.fit`: :meth:`Trainer.run_epoch` takes the steps from the current
position to the epoch's end (:meth:`Trainer.train_step` each, with the checkpoints and stops the
policies ask for between them), then :meth:`Trainer.end_epoch` evaluates, logs and saves. What a
checkpoint holds is :class:`intrakd.train.state.TrainState`; the stages (the main one and an
objective's pre-training) are :mod:`intrakd.train.stages`; when to save or stop, and what a NaN
does, are :mod:`intrakd.train.policies`.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from intrakd import distributed
from intrakd.config import RUN_COMMANDS, CheckpointConfig, OptimConfig, TrainConfig
from intrakd.data.tensor_data import Batch, Batches, Split
from intrakd.models.checkpoint import CheckpointStore, write_atomic
from intrakd.progress import Progress, say
from intrakd.train.accel import PerfSettings
from intrakd.train.evaluate import evaluate
from intrakd.train.policies import NONFINITE_CHECK_EVERY, NonFinitePolicy, StopPolicy
from intrakd.train.signals import Interrupted
from intrakd.train.sinks import TensorBoardLog, console_line
from intrakd.train.stages import Stage, main_stage, pretrain_stage
from intrakd.train.state import RunInfo, TrainState


class Trainer:
    """Epoch loop: :meth:`train_step`, log ``metrics.jsonl``, evaluate, save the :class:`TrainState`.

    Extension points: :meth:`train_step` is the one optimisation step (mixed precision, gradient
    scaling, distributed variants wrap or replace it); ``state.stateful`` maps checkpoint keys to
    objects with ``state_dict``/``load_state_dict`` (add e.g. a gradient scaler there);
    :meth:`save_checkpoint` and :meth:`log_epoch` are the only writers of the run folder during
    training.
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
        self.run_dir, self.info = Path(run_dir), info
        checkpoint = checkpoint or CheckpointConfig()
        # speed settings (train/accel.py) and data parallelism (intrakd/distributed.py; identity in one process)
        self.perf = perf or PerfSettings.plain(next(model.parameters()).device)
        self.main = main_stage(model, objective, optim, self.perf, sync_batchnorm)
        self.pretrain = pretrain_stage(model, objective, optim, self.perf)
        """The objective's pre-training stage (train/stages.py), when it declares one."""
        self.stage = self.main
        self.epochs = (self.pretrain.epochs if self.pretrain else 0) + optim.epochs
        """Epochs of the whole run: the pre-training stage's, then the main stage's ``optim.epochs``."""
        stateful: dict[str, Any] = {"model": model, "objective": objective, "optimizer": self.main.optimizer,
                                    "scheduler": self.main.scheduler}
        decay = (train or TrainConfig()).ema_decay
        self.ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True) if decay else None
        """The moving average of the model's weights (``train.ema_decay``), or None."""
        if self.ema is not None:
            stateful["ema"] = self.ema
        if self.pretrain:
            stateful["init_optimizer"] = self.pretrain.optimizer
        self.state = TrainState(info, stateful)
        self.store = CheckpointStore(self.run_dir / "checkpoints", checkpoint.keep_last)
        self.stops = StopPolicy(checkpoint)
        buffers = [b for module in (model, objective) for b in module.buffers()]
        self.nonfinite = NonFinitePolicy((train or TrainConfig()).skip_nonfinite_steps, buffers, self._where,
                                         info.kind, f"intrakd {RUN_COMMANDS[info.kind]} --resume {self.run_dir}")
        self.writer = distributed.is_main()
        """Rank 0 alone writes the run folder."""
        self.board: TensorBoardLog | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def load(self, state: dict[str, Any], path: Path | None = None) -> None:
        """Continue from the checkpoint ``state`` (read from ``path``)."""
        self.state.load(state, path, len(self.train_batches), self.device)

    # ----------------------------------------------------------------------------------------- epochs

    def fit(self, extra_summary: dict[str, Any] | None = None) -> dict[str, Any]:
        """Train from the current position to the last epoch; write the run folder; return the summary
        (plus ``extra_summary``). Raises :class:`Interrupted` after saving on SIGTERM/SIGINT, and
        :class:`NonFiniteLoss` without saving when a loss term is not finite."""
        state = self.state
        if self.writer:
            write_atomic(self.run_dir / "metrics.jsonl", "".join(line + "\n" for line in state.metrics_lines).encode())
            # optional extra: TensorBoard event files when tensorboard is installed
            self.board = TensorBoardLog(self.run_dir)
        state.restart_clock()
        self.stops.schedule.saved()
        try:
            with self.stops:
                while state.epoch < self.epochs:
                    self.run_epoch()
                    self.end_epoch()
                    self._stop_if_asked(self.stops.asked())
        finally:
            if self.board is not None:
                self.board.close()
        state.tick(training=False)
        return self._summary(extra_summary or {})

    def run_epoch(self) -> None:
        """The steps from the current position to the epoch's end, with the checkpoints and stops the
        policies ask for between them."""
        state, steps = self.state, len(self.train_batches)
        if state.step < steps:
            self._begin_epoch(state.epoch, state.step)
            stage = " (pre-training)" if self.stage is self.pretrain else ""
            progress = Progress(steps, f"[{self.info.name}] epoch {state.epoch + 1}/{self.epochs}{stage}",
                                initial=state.step, after=steps * (self.epochs - state.epoch - 1),
                                enabled=self.writer)
            for batch in self.train_batches:
                self.train_step(batch)
                state.advance()
                if state.global_step % NONFINITE_CHECK_EVERY == 0:
                    self.nonfinite.check(state.last_checkpoint)
                save, stop = self.stops.after_step(state.global_step)
                if save:
                    self.save_checkpoint()
                self._stop_if_asked(stop)
                progress.update(1, batch.labels.shape[0] * distributed.world_size(), self._running_loss)
            progress.close()
        state.tick(training=True)

    def train_step(self, batch: Batch) -> None:
        """One optimisation step of the current stage on ``batch``: forward through the objective, sum
        the named terms, backward, update. With ``train.skip_nonfinite_steps > 0`` a step whose terms
        are not all finite is not applied (and the buffers it changed are put back)."""
        stage = self.stage
        saved = self.nonfinite.snapshot()
        if self.perf.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()  # CUDA graphs: the previous step's outputs are done with
        with self.perf.autocast():
            result = stage.forward(batch, self.teacher)
        loss = torch.stack([v.float() for v in result.losses.values()]).sum()
        terms = {"loss": loss, **result.losses}
        if self.nonfinite.skip(saved, terms, self.state):
            return
        self.main.optimizer.zero_grad(set_to_none=True)  # every trainable parameter, the pre-trained ones included
        loss.backward()
        distributed.average_gradients(stage.params)
        stage.optimizer.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        self.nonfinite.observe(terms, self.state.global_step)
        self.state.meter.add(loss, result, batch.labels)

    def end_epoch(self) -> None:
        """Close the epoch: the stage's schedule, evaluation, the epoch's record, a checkpoint when due."""
        state = self.state
        stage = self._stage_of(state.epoch)
        self.nonfinite.check(state.last_checkpoint)
        metrics = state.meter.summary()
        if self.nonfinite.limit:
            metrics["skipped_steps"] = state.meter.skipped
        metrics.update(getattr(self.train_batches, "epoch_stats", dict)())  # e.g. skipped_images
        lr = stage.optimizer.param_groups[0]["lr"]
        if stage.scheduler is not None:  # the main stage's schedule counts its own epochs only
            stage.scheduler.step()
        state.last_eval = evaluate(self.model, self.eval_set, self.eval_batch_size)
        split = self.info.eval_split
        main = stage is self.main
        record = {"epoch": state.epoch + 1, **({"stage": stage.name} if self.pretrain else {}), "lr": lr, **metrics,
                  f"{split}_acc": state.last_eval["acc"], f"{split}_top5": state.last_eval["top5"],
                  f"{split}_loss": state.last_eval["loss"]}
        if self.ema is not None:  # the moving average's accuracy beside the raw weights'
            state.last_eval["ema_acc"] = evaluate(self.ema.module, self.eval_set, self.eval_batch_size)["acc"]
            record[f"{split}_ema_acc"] = state.last_eval["ema_acc"]
        is_best = main and state.last_eval["acc"] > state.best_acc  # the best student of the main stage
        if main:
            state.best_acc = max(state.best_acc, state.last_eval["acc"])
        state.epoch, state.step = state.epoch + 1, 0
        state.meter.reset()
        state.dirty = True
        self.log_epoch(record)
        if self.stops.schedule.epoch_due(state.epoch, self.epochs, is_best):
            self.save_checkpoint(best=is_best)

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over ``train_batches`` as epoch ``epoch``, without checkpoints, logs, evaluation or
        a change of the run's position (benchmarks, warm-up); returns the pass's logged means."""
        meter = self.state.meter
        self._begin_epoch(epoch)
        meter.reset()
        start = time.perf_counter()
        for batch in self.train_batches:
            self.train_step(batch)
        self.nonfinite.check(self.state.last_checkpoint)
        meter.seconds = time.perf_counter() - start
        metrics = meter.summary()
        meter.reset()
        return metrics

    def _begin_epoch(self, epoch: int, step: int = 0) -> None:
        """The stage and training mode, and the data order and objective schedule of ``epoch`` from
        ``step`` on."""
        self.stage = self._stage_of(epoch)
        self.model.train(self.stage.trains_model)
        self.objective.train()
        if step:
            self.train_batches.set_epoch(epoch, step)
        else:  # the start of an epoch: the protocol's default start (benchmarks' Batches take only the epoch)
            self.train_batches.set_epoch(epoch)
        if hasattr(self.objective, "set_epoch"):  # objectives with a schedule over epochs
            self.objective.set_epoch(epoch)

    def _stage_of(self, epoch: int) -> Stage:
        return self.pretrain if self.pretrain and epoch < self.pretrain.epochs else self.main

    def _summary(self, extra: dict[str, Any]) -> dict[str, Any]:
        """The run's summary (``summary.json``), written by rank 0."""
        state = self.state
        summary = {
            "kind": self.info.kind, "model": self.info.model_name, "eval_split": self.info.eval_split,
            "final_acc": state.last_eval["acc"], "best_acc": state.best_acc,
            **({"final_top5": state.last_eval["top5"]} if "top5" in state.last_eval else {}),  # runs since top-5
            **({"final_ema_acc": state.last_eval["ema_acc"]} if self.ema is not None else {}),
            "epochs": self.epochs,
            "wall_seconds": state.wall_seconds, **extra,
        }
        if self.pretrain:
            summary["init_epochs"] = self.pretrain.epochs
        if self.nonfinite.limit:
            summary["skipped_steps"] = state.skipped_steps
        summary.update(getattr(self.train_batches, "run_stats", dict)())
        if self.writer:
            write_atomic(self.run_dir / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
        return summary

    def log_epoch(self, record: dict[str, Any]) -> None:
        """Append one epoch's record to ``metrics.jsonl`` (and to the lines a checkpoint keeps)."""
        line = json.dumps(record)
        self.state.metrics_lines.append(line)
        if not self.writer:
            return
        with (self.run_dir / "metrics.jsonl").open("a") as f:
            f.write(line + "\n")
        if self.board is not None:
            self.board.log(record, record["epoch"])
        say(console_line(self.info.name, record, self.epochs, self.info.eval_split, self.state.meter.terms))

    def _running_loss(self) -> dict[str, float]:
        """The epoch's mean loss so far (read when a progress line is shown)."""
        meter = self.state.meter
        return {"loss": meter.sums["loss"].item() / meter.steps} if meter.steps and "loss" in meter.sums else {}

    def _where(self, global_step: int) -> str:
        epoch, step = divmod(global_step, len(self.train_batches))
        return f"epoch {epoch + 1}, step {step + 1}/{len(self.train_batches)} (global step {global_step + 1})"

    def _stop_if_asked(self, asked: bool) -> None:
        """Save and raise :class:`Interrupted` if a signal came (``asked``: the ranks' joint answer)."""
        if not asked:
            return
        state = self.state
        if state.dirty:
            self.save_checkpoint()
        saved = f"state saved in {state.last_checkpoint}" if state.last_checkpoint else "no step was taken yet"
        raise Interrupted(
            self.stops.signum,
            f"stopped by {signal.Signals(self.stops.signum).name} {state.position_text(len(self.train_batches))}; "
            f"{saved}. Continue with: intrakd {RUN_COMMANDS[self.info.kind]} --resume {self.run_dir}",
        )

    def save_checkpoint(self, best: bool = False) -> Path:
        """Write the whole training state at the current position (and point ``best.pt`` at it).

        Non-finite losses are checked first, so a bad state never replaces a good checkpoint.
        """
        state = self.state
        self.nonfinite.check(state.last_checkpoint)
        state.tick(training=state.step > 0)
        path = state.save(self.store, len(self.train_batches), best, write=self.writer)
        self.stops.schedule.saved()
        state.tick(training=False)
        return path
