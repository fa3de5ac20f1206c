"""Training: the loop, whole runs, checkpoints, evaluation."""

from intrakd.train.checkpoint import classifier_from_checkpoint, read_checkpoint, save_checkpoint
from intrakd.train.evaluate import accuracy, evaluate, predict
from intrakd.train.loop import RunInfo, Trainer
from intrakd.train.runs import distill, resolve_device, train_teacher

__all__ = [
    "RunInfo", "Trainer", "accuracy", "classifier_from_checkpoint", "distill", "evaluate", "predict",
    "read_checkpoint", "resolve_device", "save_checkpoint", "train_teacher",
]
