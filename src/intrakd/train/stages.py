"""The stages of a run: the main stage, and the pre-training stage an objective may declare.

A :class:`Stage` is what one optimisation step of that stage uses; the loop runs the pre-training
stage's epochs first (counted in the run's epochs), then the main stage's ``optim.epochs``.

The pre-training stage (RepDistiller's "init" stage: AB, FT, FSP; the protocol is
:class:`intrakd.train.objective.PretrainStage`) calls the objective's ``init_step`` on the unwrapped
model and updates only ``init_parameters``, with a separate SGD optimiser (same momentum and weight
decay) at the constant rate ``init_lr`` (None: ``optim.lr``) and no schedule. The main stage's
optimiser and schedule start untouched after it. A model none of whose parameters are pre-trained
runs in eval mode during the stage (its batch-norm statistics stay as they are).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from intrakd import distributed
from intrakd.config import OptimConfig
from intrakd.data.tensor_data import Batch
from intrakd.train.accel import PerfSettings
from intrakd.train.objective import StepOutput


def build_optimizer(params: Iterable[nn.Parameter], cfg: OptimConfig, **options: Any) -> torch.optim.Optimizer:
    """``optim.name``: SGD with momentum and weight decay (the benchmark recipe), or AdamW with decoupled
    weight decay; ``options`` pick its implementation (the fused kernel)."""
    if cfg.name == "adamw":
        return torch.optim.AdamW(list(params), lr=cfg.lr, weight_decay=cfg.weight_decay, **options)
    return torch.optim.SGD(list(params), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                           **options)


def build_schedule(optimizer: torch.optim.Optimizer, cfg: OptimConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """The main stage's learning-rate schedule, stepped once per epoch (at the epoch's end, so a checkpoint
    taken mid-epoch holds that epoch's rate): ``warmup_epochs`` of linear warm-up (LinearLR), then
    MultiStepLR at ``milestones`` (counted from the run's first epoch) or CosineAnnealingLR to 0 over the
    remaining epochs, joined by SequentialLR."""
    lr_scheduler = torch.optim.lr_scheduler
    warmup = cfg.warmup_epochs
    if cfg.schedule == "cosine":
        main: lr_scheduler.LRScheduler = lr_scheduler.CosineAnnealingLR(optimizer, cfg.epochs - warmup)
    else:  # SequentialLR restarts the main schedule's count at the end of the warm-up
        main = lr_scheduler.MultiStepLR(optimizer, [m - warmup for m in cfg.milestones or []], cfg.lr_decay)
    if not warmup:
        return main
    ramp = lr_scheduler.LinearLR(optimizer, start_factor=1 / (warmup + 1), total_iters=warmup)
    return lr_scheduler.SequentialLR(optimizer, [ramp, main], milestones=[warmup])


def describe_schedule(cfg: OptimConfig) -> str:
    """The main stage's optimiser and learning-rate schedule in words (a run's introduction)."""
    optimizer = (f"AdamW lr {cfg.lr:g}" if cfg.name == "adamw" else f"SGD lr {cfg.lr:g} momentum {cfg.momentum:g}") + \
        f" wd {cfg.weight_decay:g}"
    warmup = f"{cfg.warmup_epochs} epochs linear warm-up, then " if cfg.warmup_epochs else ""
    steps = "/".join(str(m) for m in cfg.milestones or [])
    if cfg.schedule == "cosine":
        decay = "cosine to 0"
    else:
        decay = f"x{cfg.lr_decay:g} after epochs {steps}" if steps else "constant"
    return f"{optimizer}, {warmup}{decay} (of {cfg.epochs})"


@dataclass
class Stage:
    """What one step of a stage uses."""

    name: str
    """'main' or 'init' (the pre-training stage)."""
    forward: Callable[[Batch, nn.Module | None], StepOutput]
    """``forward(batch, teacher)``: the objective's step on the model (compiled when asked)."""
    params: list[nn.Parameter]
    """Parameters whose gradients :func:`intrakd.distributed.average_gradients` averages (those DDP
    does not)."""
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    """Stepped after each of the stage's epochs (None: a constant rate)."""
    epochs: int = 0
    """Epochs of the stage (the main stage's count is ``optim.epochs``; recorded for the pre-training one)."""
    trains_model: bool = True
    """Whether the model runs in training mode during the stage."""


def main_stage(model: nn.Module, objective: nn.Module, optim: OptimConfig, perf: PerfSettings,
               sync_batchnorm: bool = False) -> Stage:
    """The main stage: the objective's step on the data-parallel model, one optimiser over the model's and
    the objective's trainable parameters, the run's schedule (:func:`build_schedule`)."""
    trainable = [p for p in list(model.parameters()) + list(objective.parameters()) if p.requires_grad]
    optimizer = build_optimizer(trainable, optim, **perf.optimizer_options())
    train_model = distributed.wrap_model(model, sync_batchnorm)  # identity in one process
    distributed.broadcast_module(objective)
    objective_params = [p for p in objective.parameters() if p.requires_grad]
    step = functools.partial(perf.compile_step(objective), train_model)
    scheduler = build_schedule(optimizer, optim)
    return Stage("main", step, objective_params, optimizer, scheduler, optim.epochs)


def pretrain_stage(model: nn.Module, objective: nn.Module, optim: OptimConfig, perf: PerfSettings) -> Stage | None:
    """The objective's pre-training stage, or None when it declares none (``init_epochs`` 0 or absent)."""
    epochs = int(getattr(objective, "init_epochs", 0))
    if not epochs:
        return None
    params = list(objective.init_parameters(model))
    init_lr = optim.lr if objective.init_lr is None else objective.init_lr
    # RepDistiller's stage: SGD whatever the main stage's optimiser
    optimizer = build_optimizer(params, dataclasses.replace(optim, lr=init_lr, name="sgd"), **perf.optimizer_options())
    # the unwrapped model: its gradients are averaged with the other pre-trained ones
    step = functools.partial(perf.compile_step(objective.init_step), model)
    model_params = {id(p) for p in model.parameters()}
    trains_model = any(id(p) in model_params for p in params)
    return Stage("init", step, params, optimizer, None, epochs, trains_model)
