"""Reading checkpoint files: checksum verification, safe loading onto the CPU, and rebuilding a model
from its weights (kept beside the models, as timm keeps its weight loading).

A checkpoint ``X.pt`` is a plain ``torch.save`` file with a ``X.pt.sha256`` beside it in the format of
``sha256sum``. A run's checkpoint folder names them ``ckpt-e{E}-s{S}.pt`` (after E whole epochs and S
steps of the next); the writing side is :mod:`intrakd.train.checkpoint`.
"""

from __future__ import annotations

import hashlib
import pickle
import re
import textwrap
from pathlib import Path
from typing import Any

import torch
from torch import nn

from intrakd.models.contract import Classifier, check_reads_images
from intrakd.models.registry import create_model

CHECKSUM_SUFFIX = ".sha256"

HISTORY_NAME = re.compile(r"ckpt-e(\d+)-s(\d+)\.pt")
"""Name of a checkpoint in a run's history: ``ckpt-e{epochs}-s{steps}.pt``."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: truncated, corrupted, unreadable or of the wrong kind."""


def checksum_path(path: Path) -> Path:
    """The checksum file that belongs to checkpoint ``path``."""
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def file_sha256(path: Path) -> str:
    """sha256 hex digest of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()

def history_file_name(epoch: int, step: int) -> str:
    """The name of the checkpoint taken after ``epoch`` whole epochs and ``step`` steps of the next."""
    return f"ckpt-e{epoch:04d}-s{step:06d}.pt"


def history_position(path: Path) -> tuple[int, int] | None:
    """(epochs, steps) encoded in a history file's name; None for other files."""
    match = HISTORY_NAME.fullmatch(path.name)
    return (int(match[1]), int(match[2])) if match else None


def checkpoint_history(folder: Path) -> list[tuple[tuple[int, int], Path]]:
    """The history files present in a run's checkpoint folder, oldest first."""
    if not folder.is_dir():
        return []
    found = [(history_position(p), p) for p in folder.iterdir() if p.is_file() and not p.is_symlink()]
    return sorted((pos, p) for pos, p in found if pos is not None)


def verify_checkpoint(path: str | Path) -> bool:
    """Check ``path`` (symbolic links followed) against its checksum file.

    Returns False when there is no checksum file (a file from elsewhere); raises
    :class:`CheckpointError` when the file does not match it (truncated or damaged).
    """
    real = Path(path).resolve()
    sidecar = checksum_path(real)
    if not sidecar.is_file():
        return False
    recorded = sidecar.read_text(errors="replace").split()
    if not recorded or not re.fullmatch(r"[0-9a-f]{64}", recorded[0]):
        raise CheckpointError(f"checkpoint {path}: its checksum file {sidecar} is damaged")
    actual = file_sha256(real)
    if actual != recorded[0]:
        raise CheckpointError(
            f"checkpoint {path} is corrupt: its sha256 ({actual[:16]}...) differs from the one recorded in "
            f"{sidecar.name} when it was written ({recorded[0][:16]}...); the file was truncated or damaged"
        )
    return True


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint file onto the CPU (tensors and plain data only), checking its checksum.

    A damaged file raises :class:`CheckpointError` naming it and, when it lies in a run's checkpoint
    folder, the newest earlier checkpoint there that is intact.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        verify_checkpoint(path)
        state = load_verified(path)
    except CheckpointError as err:
        raise CheckpointError(f"{err}{_earlier_hint(path)}") from err
    if isinstance(state, dict) and "model" not in state and all(isinstance(v, torch.Tensor) for v in state.values()):
        state = {"model": state}  # a bare state_dict
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise CheckpointError(f"checkpoint {path} holds no model weights: expected a dict with a 'model' state_dict")
    return state


def load_verified(path: Path) -> Any:
    """``torch.load`` onto the CPU, tensors and plain data only; any failure is a CheckpointError."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling, zip and storage errors alike: the file cannot be used
        raise CheckpointError(f"checkpoint {path} cannot be read ({_load_failure(path, err)}); "
                              "it may be truncated or not a PyTorch checkpoint") from err


def _load_failure(path: Path, err: Exception) -> str:
    """What is wrong with a file ``torch.load`` refused, in one short line. A file of other objects
    than tensors and plain data is named by those objects' types, found by torch's safe unpickler
    (its own error is a page that ends by advising an unsafe load)."""
    if isinstance(err, pickle.UnpicklingError):
        unsafe = _unsafe_globals(path)
        if unsafe:
            return (f"{type(err).__name__}: Unsupported global: GLOBAL {', '.join(unsafe)}; "
                    "only tensors and plain data are loaded")
        return f"{type(err).__name__}: not a pickle of tensors and plain data"
    first_line = next((line.strip() for line in str(err).splitlines() if line.strip()), "no message")
    return f"{type(err).__name__}: {textwrap.shorten(first_line, 240)}"


def _unsafe_globals(path: Path) -> list[str]:
    """The classes and functions in a checkpoint that the weights-only unpickler refuses (none when
    torch cannot list them)."""
    find = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    try:
        return list(find(path)) if find is not None else []
    except (pickle.UnpicklingError, RuntimeError, OSError, ValueError, EOFError):  # too damaged to list
        return []


def _earlier_hint(path: Path) -> str:
    """'; the previous intact checkpoint is X' for a file in a run's checkpoint folder, else ''."""
    real = path.resolve()
    position = history_position(real)
    for older_position, older in reversed(checkpoint_history(real.parent)):
        if older == real or (position is not None and older_position >= position):
            continue
        try:
            if verify_checkpoint(older):
                return f"; the previous intact checkpoint is {older}"
        except CheckpointError:
            continue
    return ""


def load_weights(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str, model_name: str) -> None:
    """Load ``state_dict`` into ``model`` exactly, or raise naming the missing, unexpected and
    mis-shaped keys."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items() if k in state_dict and state_dict[k].shape != v.shape
    ]
    if missing or unexpected or mismatched:
        def show(items: list[str]) -> str:
            return ", ".join(items[:6]) + (f" ... ({len(items)} in all)" if len(items) > 6 else "")

        parts = [f"{source} does not fit model {model_name!r}:"]
        if missing:
            parts.append(f"missing keys: {show(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {show(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches (checkpoint vs model): {show(mismatched)}")
        parts.append("Check that the architecture and number of classes are those the checkpoint was trained with.")
        raise ValueError(" ".join(parts))
    model.load_state_dict(state_dict)


def classifier_from_checkpoint(
    path: str | Path, model_name: str | None = None, num_classes: int | None = None,
    image_shape: tuple[int, int, int] | None = None,
) -> tuple[Classifier, dict[str, Any]]:
    """Rebuild the model stored in a checkpoint (intrakd's own or a ``{"model": state_dict}`` file).

    ``model_name`` is needed when the file does not name its architecture; ``num_classes`` when
    given must agree with the checkpoint; when ``image_shape`` is given the model is built for such images
    (a family's models: see :func:`create_model`) and must read them.
    """
    state = read_checkpoint(path)
    name = state.get("model_name") or model_name
    if name is None:
        raise ValueError(f"checkpoint {path} does not name its architecture: pass the model name "
                         "(teacher_model=NAME for distill, --model NAME for evaluate)")
    if model_name is not None and model_name != name:
        raise ValueError(f"checkpoint {path} holds a {name!r}, not the requested {model_name!r}")
    stored_classes = state.get("num_classes") or _classes_from_weights(state["model"])
    if num_classes is not None and stored_classes is not None and stored_classes != num_classes:
        raise ValueError(f"checkpoint {path} is a {stored_classes}-class model but the data has {num_classes} "
                         "classes: use a teacher trained on this dataset")
    classes = stored_classes or num_classes
    if classes is None:
        raise ValueError(f"cannot tell how many classes the model in {path} has")
    model = create_model(name, num_classes=classes, image_shape=image_shape)
    load_weights(model, state["model"], f"checkpoint {path}", name)
    if image_shape is not None:
        check_reads_images(model, image_shape, f"the {name} in checkpoint {path}",
                           "use a checkpoint trained on images like these")
    return model, state


def _classes_from_weights(state_dict: dict[str, torch.Tensor]) -> int | None:
    """The output size of the last 2-D weight (the classifier), for files that do not record it."""
    weights = [v for k, v in state_dict.items() if k.endswith("weight") and v.ndim == 2]
    return int(weights[-1].shape[0]) if weights else None
