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


def build_optimizer(params: Iterable[nn.Parameter], cfg: OptimConfig, **options: Any) -> torch.optim.SGD:
    """SGD with momentum and weight decay (the benchmark recipe); ``options`` pick its implementation."""
    return torch.optim.SGD(list(params), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                           **options)


def describe_schedule(cfg: OptimConfig) -> str:
    """The main stage's optimiser and learning-rate schedule in words (a run's introduction)."""
    steps = "/".join(str(m) for m in cfg.milestones or [])
    decay = f"x{cfg.lr_decay:g} after epochs {steps}" if steps else "constant"
    return f"SGD lr {cfg.lr:g} momentum {cfg.momentum:g} wd {cfg.weight_decay:g}, {decay} (of {cfg.epochs})"


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
    """The main stage: the objective's step on the data-parallel model, one SGD over the model's and
    the objective's trainable parameters, the multi-step schedule."""
    trainable = [p for p in list(model.parameters()) + list(objective.parameters()) if p.requires_grad]
    optimizer = build_optimizer(trainable, optim, **perf.optimizer_options())
    train_model = distributed.wrap_model(model, sync_batchnorm)  # identity in one process
    distributed.broadcast_module(objective)
    objective_params = [p for p in objective.parameters() if p.requires_grad]
    step = functools.partial(perf.compile_step(objective), train_model)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, optim.milestones, optim.lr_decay)
    return Stage("main", step, objective_params, optimizer, scheduler, optim.epochs)


def pretrain_stage(model: nn.Module, objective: nn.Module, optim: OptimConfig, perf: PerfSettings) -> Stage | None:
    """The objective's pre-training stage, or None when it declares none (``init_epochs`` 0 or absent)."""
    epochs = int(getattr(objective, "init_epochs", 0))
    if not epochs:
        return None
    params = list(objective.init_parameters(model))
    init_lr = optim.lr if objective.init_lr is None else objective.init_lr
    optimizer = build_optimizer(params, dataclasses.replace(optim, lr=init_lr), **perf.optimizer_options())
    # the unwrapped model: its gradients are averaged with the other pre-trained ones
    step = functools.partial(perf.compile_step(objective.init_step), model)
    model_params = {id(p) for p in model.parameters()}
    trains_model = any(id(p) in model_params for p in params)
    return Stage("init", step, params, optimizer, None, epochs, trains_model)
