"""The training engine: the loop, checkpoints, evaluation, interruption and numerical guards. It knows
objectives only through their protocol (:mod:`intrakd.train.objective`); whole runs built from a
configuration are :mod:`intrakd.runs`."""

from intrakd.models.checkpoint import (
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
from intrakd.train.signals import Interrupted

__all__ = [
    "CheckpointError", "CheckpointStore", "CheckpointWriteError", "Interrupted", "NonFiniteLoss",
    "RunInfo", "Trainer", "accuracy", "classifier_from_checkpoint", "evaluate", "predict",
    "read_checkpoint", "save_checkpoint",
]
