"""Whole runs from a configuration: ``train_teacher`` and ``distill`` write a run folder each."""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from intrakd.config import StudentConfig, TeacherConfig, to_dict
from intrakd.data import build_datasets
from intrakd.models import create_model
from intrakd.objectives import IntraClassTeacherObjective, create_distiller
from intrakd.train import distributed
from intrakd.train.accel import PerfSettings, resolve_perf
from intrakd.train.checkpoint import classifier_from_checkpoint
from intrakd.train.loop import RunInfo, Trainer


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU; anything else as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available: use device=cpu or device=auto")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prepare_run_dir(out: str | Path, overwrite: bool = False) -> Path:
    """Create the run folder; refuse one that already holds a run unless ``overwrite``."""
    run_dir = Path(out)
    if (run_dir / "config.yaml").exists():
        if not overwrite:
            raise FileExistsError(f"{run_dir} already holds a run: choose another --out, or pass --overwrite "
                                  "to replace it")
        for name in ("metrics.jsonl", "summary.json", "config.yaml"):
            (run_dir / name).unlink(missing_ok=True)
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _write_config(run_dir: Path, command: str, config: dict[str, Any]) -> None:
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"command": command, **config}, sort_keys=False))


def _start(cfg: TeacherConfig | StudentConfig) -> tuple[torch.device, PerfSettings]:
    """This process's device (joining torchrun's process group) and its applied speed settings."""
    device = distributed.setup(cfg.dist, resolve_device(cfg.device))
    perf = resolve_perf(cfg.perf, device, distributed.local_world_size())
    perf.apply()
    return device, perf


def _run_facts(perf: PerfSettings) -> dict[str, Any]:
    return {"perf": perf.describe(), "world_size": distributed.world_size()}


def train_teacher(cfg: TeacherConfig, out: str | Path, overwrite: bool = False) -> dict[str, Any]:
    """Train a teacher (vanilla when ``cfg.intra.weight == 0``); returns the run summary."""
    device, perf = _start(cfg)
    train_set, eval_set, split = build_datasets(cfg.data)
    run_dir = Path(out)  # rank 0 creates it, the other ranks wait
    distributed.run_on_main(lambda: _write_config(prepare_run_dir(out, overwrite), "train-teacher", to_dict(cfg)))
    seed_everything(cfg.seed)
    model = perf.prepare_model(create_model(cfg.model, num_classes=train_set.num_classes).to(device))
    objective = IntraClassTeacherObjective(cfg.intra, train_set.num_classes, model.embedding_dim, cfg.views).to(device)
    trainer = Trainer(
        model=model, objective=objective,
        train_batches=train_set.train_batches(cfg.data.batch_size, cfg.views, cfg.seed, device),
        eval_set=eval_set, optim=cfg.optim, run_dir=run_dir,
        info=RunInfo("teacher", cfg.model, train_set.num_classes, to_dict(cfg), split),
        eval_batch_size=cfg.data.eval_batch_size, perf=perf, sync_batchnorm=cfg.dist.sync_batchnorm,
    )
    return trainer.fit(_run_facts(perf))


def distill(cfg: StudentConfig, out: str | Path, overwrite: bool = False) -> dict[str, Any]:
    """Distil ``cfg.model`` from the frozen teacher checkpoint ``cfg.teacher``; returns the summary."""
    if not cfg.teacher:
        raise ValueError("no teacher given: pass --teacher CHECKPOINT (or teacher=PATH)")
    device, perf = _start(cfg)
    train_set, eval_set, split = build_datasets(cfg.data)
    teacher, _ = classifier_from_checkpoint(cfg.teacher, cfg.teacher_model, train_set.num_classes)
    teacher = perf.prepare_model(teacher.to(device).eval().requires_grad_(False))
    run_dir = Path(out)  # rank 0 creates it, the other ranks wait
    distributed.run_on_main(lambda: _write_config(prepare_run_dir(out, overwrite), "distill", to_dict(cfg)))
    seed_everything(cfg.seed)
    model = perf.prepare_model(create_model(cfg.model, num_classes=train_set.num_classes).to(device))
    objective = create_distiller(cfg.distill.method, cfg.distill, train_set.num_classes, model, teacher).to(device)
    trainer = Trainer(
        model=model, objective=objective,
        train_batches=train_set.train_batches(cfg.data.batch_size, objective.num_views, cfg.seed, device),
        eval_set=eval_set, optim=cfg.optim, run_dir=run_dir,
        info=RunInfo("student", cfg.model, train_set.num_classes, to_dict(cfg), split),
        teacher=teacher, eval_batch_size=cfg.data.eval_batch_size, perf=perf,
        sync_batchnorm=cfg.dist.sync_batchnorm,
    )
    return trainer.fit({"teacher": str(cfg.teacher), **_run_facts(perf)})
