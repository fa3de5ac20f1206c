"""Checkpoints: atomic writes, and loading a model's weights with errors that say what does not fit."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from intrakd.models import Classifier, create_model

CHECKPOINT_FORMAT = "intrakd-1"


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` to ``path`` atomically: a temporary file in the same folder, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint file onto the CPU (tensors and plain data only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"checkpoint {path} cannot be read ({type(err).__name__}: {err}); "
                         "it may be truncated or not a PyTorch checkpoint") from err
    if isinstance(state, dict) and "model" not in state and all(isinstance(v, torch.Tensor) for v in state.values()):
        state = {"model": state}  # a bare state_dict
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise ValueError(f"checkpoint {path} holds no model weights: expected a dict with a 'model' state_dict")  # noqa: TRY004
    return state


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
    path: str | Path, model_name: str | None = None, num_classes: int | None = None
) -> tuple[Classifier, dict[str, Any]]:
    """Rebuild the model stored in a checkpoint (intrakd's own or a ``{"model": state_dict}`` file).

    ``model_name`` is needed when the file does not name its architecture; ``num_classes`` when
    given must agree with the checkpoint.
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
    model = create_model(name, num_classes=classes)
    load_weights(model, state["model"], f"checkpoint {path}", name)
    return model, state


def _classes_from_weights(state_dict: dict[str, torch.Tensor]) -> int | None:
    """The output size of the last 2-D weight (the classifier), for files that do not record it."""
    weights = [v for k, v in state_dict.items() if k.endswith("weight") and v.ndim == 2]
    return int(weights[-1].shape[0]) if weights else None
