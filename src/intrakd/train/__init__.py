"""Training: the loop, whole runs, checkpoints, evaluation, interruption and numerical guards."""

from intrakd.train.checkpoint import (
    CheckpointError,
    CheckpointStore,
    CheckpointWriteError,
    classifier_from_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from intrakd.train.evaluate import accuracy, evaluate, predict
from intrakd.train.guards import NonFiniteLoss
from intrakd.train.loop import RunInfo, Trainer
from intrakd.train.runs import ResumeError, distill, resolve_device, train_teacher
from intrakd.train.signals import Interrupted

__all__ = [
    "CheckpointError", "CheckpointStore", "CheckpointWriteError", "Interrupted", "NonFiniteLoss", "ResumeError",
    "RunInfo", "Trainer", "accuracy", "classifier_from_checkpoint", "distill", "evaluate", "predict",
    "read_checkpoint", "resolve_device", "save_checkpoint", "train_teacher",
]
