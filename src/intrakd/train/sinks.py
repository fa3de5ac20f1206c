"""Where the loop's epoch records go besides ``metrics.jsonl``: the console line and optional
TensorBoard event files (``pip install 'intrakd[tensorboard]'``).

TensorBoard files are written when the ``tensorboard`` package is installed; without it nothing is
written and nothing fails. Set ``INTRAKD_TENSORBOARD=0`` to turn them off.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CONSOLE_KEYS = ("lambda", "pass_rate", "train_acc", "{split}_acc", "images_per_s")
"""The values of an epoch record printed on the console after the loss and its terms, in this order
(those present)."""


def console_line(kind: str, record: dict[str, Any], epochs: int, eval_split: str,
                 terms: Sequence[str] = ("ce", "intra", "kd")) -> str:
    """One epoch's record as the console shows it: ``[teacher] epoch 3/240 loss=... ce=...``, the loss
    then every one of its ``terms`` (the method's own too), then :data:`CONSOLE_KEYS`
    (``epoch 3/270 (pre-training) ...`` in an objective's pre-training stage)."""
    keys = ["loss", *terms, *(key.format(split=eval_split) for key in CONSOLE_KEYS)]
    shown = " ".join(f"{k}={record[k]:.4g}" for k in keys if k in record)
    stage = " (pre-training)" if record.get("stage") == "init" else ""
    return f"[{kind}] epoch {record['epoch']}/{epochs}{stage} {shown}"


class TensorBoardLog:
    """Scalars of each epoch record into ``<run_dir>/tensorboard`` (a no-op when unavailable)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.writer = None
        if os.environ.get("INTRAKD_TENSORBOARD", "1") == "0":
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard not installed: an optional extra
            return
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def log(self, record: dict[str, Any], step: int) -> None:
        """Every numeric value of ``record`` as a scalar at ``step`` (the epoch)."""
        if self.writer is None:
            return
        for key, value in record.items():
            if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file (no-op when none is open)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
