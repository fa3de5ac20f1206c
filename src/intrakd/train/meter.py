"""The epoch meter: running sums of one epoch's logged values, kept on the device."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from intrakd import distributed
from intrakd.train.objective import StepOutput


class EpochMeter:
    """Running sums of one epoch's logged values, kept on the device (no host sync per step)."""

    def __init__(self) -> None:
        self.terms: list[str] = []
        """The names of the loss terms the steps return, in their order (what the console line shows)."""
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.correct: Tensor | None = None
        self.images = self.steps = self.skipped = 0
        self.seconds = 0.0

    def add(self, loss: Tensor, result: StepOutput, labels: Tensor) -> None:
        """Add one applied step: the total loss, every term and statistic, the training hits (against
        ``labels``: of a mixed batch, each image's dominant class)."""
        if self.terms != list(result.losses):
            self.terms = list(result.losses)
        for name, value in [("loss", loss), *result.losses.items(), *result.stats.items()]:
            value = value.detach().float()
            # A copy, not the step's tensor: with CUDA graphs the next step writes over its outputs.
            self.sums[name] = self.sums[name] + value if name in self.sums else value.clone()
        hits = (result.logits.argmax(1) == labels).sum()
        self.correct = hits if self.correct is None else self.correct + hits
        self.images += labels.shape[0]
        self.steps += 1

    def summary(self) -> dict[str, float]:
        """Per-step means of every value, training accuracy (``train_acc``: of mixed images, against the
        class each holds most of) and throughput (over all ranks)."""
        steps = max(self.steps, 1)
        sums = dict(self.sums)
        if self.correct is not None:
            sums["correct"] = self.correct
        sums = distributed.mean_across_ranks(sums)  # one collective per epoch (identity in one process)
        ranks = distributed.world_size()
        correct = sums.pop("correct").item() * ranks if "correct" in sums else 0
        images = self.images * ranks
        metrics = {name: (value / steps).item() for name, value in sums.items()}
        metrics["train_acc"] = 100.0 * correct / max(images, 1)
        metrics["images_per_s"] = images / self.seconds if self.seconds > 0 else 0.0
        metrics["train_seconds"] = self.seconds
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "correct": self.correct, "images": self.images, "steps": self.steps,
                "skipped": self.skipped, "seconds": self.seconds, "terms": list(self.terms)}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        self.sums = {name: value.to(device) for name, value in state["sums"].items()}
        self.correct = None if state["correct"] is None else state["correct"].to(device)
        self.images, self.steps, self.skipped = state["images"], state["steps"], state["skipped"]
        self.seconds = state["seconds"]
        self.terms = list(state.get("terms", []))  # checkpoints written before the meter kept them
