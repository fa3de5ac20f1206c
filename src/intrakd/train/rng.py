"""The global random number generators of a process, captured and restored for exact resume.

States are plain tensors, lists and numbers, so a checkpoint holding them loads with
``torch.load(weights_only=True)``. A checkpoint keeps one such state per rank (a list indexed by
rank); a data-parallel run gathers them onto the rank that writes.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def capture_rng_state() -> dict[str, Any]:
    """The states of python ``random``, numpy's global generator, torch's CPU and CUDA generators
    (the CUDA ones when this process has used CUDA: a CPU run does not start a CUDA context)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "python": [version, list(internal), gauss_next],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Set every generator :func:`capture_rng_state` captured.

    CUDA states are restored when this process sees as many CUDA devices as the one that captured
    them; otherwise (a run resumed on another machine) they are left as seeded.
    """
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    saved = state["numpy"]
    np.random.set_state((saved["kind"], saved["keys"].numpy().astype(np.uint32), saved["pos"],
                         saved["has_gauss"], saved["gauss"]))
    torch.set_rng_state(state["torch"])
    cuda = state["cuda"]
    if cuda and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all(cuda)
