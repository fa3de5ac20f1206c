"""Optional TensorBoard event files of a run (``pip install 'intrakd[tensorboard]'``).

Training writes them when the ``tensorboard`` package is installed; without it nothing is written
and nothing fails. Set ``INTRAKD_TENSORBOARD=0`` to turn them off.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


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

    @property
    def enabled(self) -> bool:
        return self.writer is not None

    def log(self, record: dict[str, Any], step: int) -> None:
        """Every numeric value of ``record`` as a scalar at ``step`` (the epoch)."""
        if self.writer is None:
            return
        for key, value in record.items():
            if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
