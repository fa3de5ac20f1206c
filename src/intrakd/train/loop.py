"""The training loop. It sums the named losses an objective returns and knows no method by name."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from intrakd.analysis.tensorboard import TensorBoardLog
from intrakd.config import OptimConfig
from intrakd.data.tensor_data import Batches, Split
from intrakd.train.checkpoint import CHECKPOINT_FORMAT, save_checkpoint
from intrakd.train.evaluate import evaluate


@dataclass
class RunInfo:
    """What a checkpoint records about the run besides weights."""

    kind: str
    """'teacher' or 'student'."""
    model_name: str
    num_classes: int
    config: dict[str, Any]
    eval_split: str


def build_optimizer(params: Iterable[nn.Parameter], cfg: OptimConfig) -> torch.optim.SGD:
    """SGD with momentum and weight decay (the benchmark recipe)."""
    return torch.optim.SGD(list(params), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


class Trainer:
    """Epoch loop: step, log ``metrics.jsonl``, evaluate, checkpoint ``last.pt`` and ``best.pt``."""

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
    ) -> None:
        self.model, self.objective, self.teacher = model, objective, teacher
        self.train_batches, self.eval_set, self.eval_batch_size = train_batches, eval_set, eval_batch_size
        self.optim_cfg, self.run_dir, self.info = optim, run_dir, info
        trainable = [p for p in list(model.parameters()) + list(objective.parameters()) if p.requires_grad]
        self.optimizer = build_optimizer(trainable, optim)
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, optim.milestones, optim.lr_decay)
        self.best_acc = float("-inf")

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the training batches; returns per-epoch means of every logged value."""
        self.model.train()
        self.objective.train()
        self.train_batches.set_epoch(epoch)
        sums: dict[str, Tensor] = {}
        correct = torch.zeros((), dtype=torch.long)
        images = steps = 0
        start = time.perf_counter()
        bar = tqdm(self.train_batches, desc=f"{self.info.kind} epoch {epoch + 1}/{self.optim_cfg.epochs}",
                   leave=False, disable=None, dynamic_ncols=True)
        for batch in bar:
            result = self.objective(self.model, batch, self.teacher)
            loss = torch.stack([v.float() for v in result.losses.values()]).sum()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            for name, value in [("loss", loss), *result.losses.items(), *result.stats.items()]:
                value = value.detach().float()
                sums[name] = sums[name] + value if name in sums else value
            correct = correct.to(batch.labels.device) + (result.logits.argmax(1) == batch.labels).sum()
            images += batch.labels.shape[0]
            steps += 1
        seconds = time.perf_counter() - start
        metrics = {name: (value / steps).item() for name, value in sums.items()}
        metrics["train_acc"] = 100.0 * correct.item() / max(images, 1)
        metrics["images_per_s"] = images / seconds
        metrics["train_seconds"] = seconds
        return metrics

    def fit(self, extra_summary: dict[str, Any] | None = None) -> dict[str, Any]:
        """Train for all epochs; write the run folder; return the summary (plus ``extra_summary``)."""
        metrics_path = self.run_dir / "metrics.jsonl"
        start = time.perf_counter()
        epochs = self.optim_cfg.epochs
        final: dict[str, float] = {}
        board = TensorBoardLog(self.run_dir)  # optional extra: event files when tensorboard is installed
        for epoch in range(epochs):
            lr = self.optimizer.param_groups[0]["lr"]
            metrics = self.train_epoch(epoch)
            self.scheduler.step()
            final = evaluate(self.model, self.eval_set, self.eval_batch_size)
            record = {"epoch": epoch + 1, "lr": lr, **metrics,
                      f"{self.info.eval_split}_acc": final["acc"], f"{self.info.eval_split}_loss": final["loss"]}
            with metrics_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
            board.log(record, epoch + 1)
            is_best = final["acc"] > self.best_acc
            self.best_acc = max(self.best_acc, final["acc"])
            self.save(epoch + 1, "last.pt")
            if is_best:
                self.save(epoch + 1, "best.pt")
            tqdm.write(self._line(record), end="\n")
        board.close()
        summary = {
            "kind": self.info.kind, "model": self.info.model_name, "eval_split": self.info.eval_split,
            "final_acc": final["acc"], "best_acc": self.best_acc, "epochs": epochs,
            "wall_seconds": time.perf_counter() - start, **(extra_summary or {}),
        }
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary

    def _line(self, record: dict[str, Any]) -> str:
        keys = ["loss", "ce", "intra", "kd", "pass_rate", "train_acc", f"{self.info.eval_split}_acc", "images_per_s"]
        shown = " ".join(f"{k}={record[k]:.4g}" for k in keys if k in record)
        return f"[{self.info.kind}] epoch {record['epoch']}/{self.optim_cfg.epochs} {shown}"

    def save(self, epoch: int, name: str) -> None:
        state = {
            "format": CHECKPOINT_FORMAT,
            "kind": self.info.kind,
            "model_name": self.info.model_name,
            "num_classes": self.info.num_classes,
            "model": self.model.state_dict(),
            "objective": self.objective.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": epoch,
            "best_acc": self.best_acc,
            "config": self.info.config,
        }
        save_checkpoint(state, self.run_dir / "checkpoints" / name)
