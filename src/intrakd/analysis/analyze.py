"""What a model learned, on one split: accuracy, calibration, embedding geometry, soft labels."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from intrakd.analysis.calibration import expected_calibration_error, reliability_bins
from intrakd.analysis.geometry import embedding_geometry, per_class_geometry
from intrakd.analysis.softlabels import per_class_mean, soft_label_samples, soft_label_stats
from intrakd.config import ConfigError, DataConfig, from_dict
from intrakd.data import FOLDER_DATASETS, Split, build_datasets, class_names
from intrakd.progress import eval_intro, say

SPLITS = ("test", "val", "train")
DEFAULT_TEMPERATURE = 4.0
"""The CIFAR distillation temperature (METHOD.md): the soft labels a student is taught with."""


@dataclass
class Predictions:
    """A model's outputs on a whole split (CPU tensors)."""

    logits: Tensor
    embeddings: Tensor
    labels: Tensor


def load_split(data: dict[str, Any], split: str, data_root: str | None = None) -> Split:
    """The ``split`` ('test', 'val' or 'train') of the data a run was configured with.

    ``data`` is the run's ``data`` settings (from its config); ``data_root`` replaces its root. 'val'
    needs ``val_per_class > 0`` in those settings; 'train' is the training set as the run used it
    (validation images removed, ``train_per_class`` applied). The whole split is used
    (``eval_per_class`` is ignored).
    """
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    values = {**data, "eval_per_class": None, **({"root": data_root} if data_root else {})}
    if split == "test":
        values["val_per_class"] = 0
    elif split == "val" and not values.get("val_per_class"):
        raise ConfigError("this run holds out no validation split (data.val_per_class is 0): use --split test")
    train, eval_set, _ = build_datasets(from_dict(DataConfig, values, prefix="data."))
    return train if split == "train" else eval_set


def data_class_names(data: dict[str, Any], data_root: str | None = None) -> list[str]:
    """The class names of the data a run was configured with (``data``: its ``data`` settings;
    ``data_root`` replaces its root), in label order."""
    return class_names(from_dict(DataConfig, {**data, **({"root": data_root} if data_root else {})}, prefix="data."))


def split_name(data: dict[str, Any], split: str) -> str:
    """The name of ``split`` of the run's data as its run logged it: a folder dataset's own evaluation
    split ('test' here) is its 'val'."""
    return "val" if split == "test" and data.get("dataset") in FOLDER_DATASETS else split


def analyze_predictions(pred: Predictions, temperature: float = DEFAULT_TEMPERATURE, bins: int = 15) -> dict[str, Any]:
    """Every statistic of one model on one split, as a JSON-ready dict.

    Scalars at the top level (``acc`` in percent, ``nll``, ``ece`` in [0, 1], the geometry of
    :func:`embedding_geometry` on L2-normalised embeddings, and ``soft_*`` of :func:`soft_label_stats`
    at ``temperature``); ``per_class`` (geometry, soft-label entropy and accuracy of each class) and
    ``reliability`` (the calibration bins) as nested dicts.
    """
    logits, labels = pred.logits.double(), pred.labels
    correct = (logits.argmax(1) == labels).double()
    classes = per_class_geometry(pred.embeddings, labels)
    samples = soft_label_samples(logits, labels, temperature)
    result: dict[str, Any] = {
        "images": int(labels.shape[0]),
        "acc": 100.0 * correct.mean().item(),
        "nll": F.cross_entropy(logits, labels).item(),
        "ece": expected_calibration_error(logits, labels, bins),
        **embedding_geometry(pred.embeddings, labels),
        **soft_label_stats(logits, labels, temperature),
    }
    result["per_class"] = {
        **{k: v for k, v in classes.items() if k != "mean_centre_distance"},
        "soft_entropy": per_class_mean(samples["entropy"], labels, classes["classes"]),
        "acc": [100.0 * v for v in per_class_mean(correct, labels, classes["classes"])],
    }
    result["reliability"] = reliability_bins(logits, labels, bins)
    return _json_safe(result)


def predict_checkpoint(
    checkpoint: str | Path, split: str = "test", data_root: str | None = None, model_name: str | None = None,
    device: str = "auto", batch_size: int | None = None, dataset: str | None = None, command: str = "analyze",
) -> tuple[Predictions, dict[str, Any]]:
    """Run a checkpoint over ``split`` of the data it was trained on (or of ``dataset``, with the run's
    other data settings); returns predictions and info. ``batch_size`` defaults to the run's
    ``data.eval_batch_size``; ``command`` names the caller in the line that says what it will do."""
    from intrakd.runs import data_input, resolve_device
    from intrakd.train import classifier_from_checkpoint, predict, read_checkpoint

    state = read_checkpoint(checkpoint)
    data = state.get("config", {}).get("data") or {}
    if not data and not dataset:
        raise ConfigError(f"checkpoint {checkpoint} records no data settings (not an intrakd run checkpoint): "
                         "name its dataset with --dataset (and --data-root)")
    data = {**data, **({"dataset": dataset} if dataset else {}), "in_memory": False}
    target = resolve_device(device)
    eval_set = load_split(data, split, data_root)
    model, _ = classifier_from_checkpoint(checkpoint, model_name, eval_set.num_classes, eval_set.image_shape,
                                          data_input(eval_set), class_names=data_class_names(data, data_root))
    name = state.get("model_name") or model_name or "model"
    shown = split_name(data, split)
    say(eval_intro(command, str(checkpoint), data.get("dataset", "?"), shown, len(eval_set), name, str(target)))
    logits, embeddings, labels = predict(model.to(target), eval_set, batch_size or data.get("eval_batch_size", 512),
                                         desc=f"[{shown}] predicting")
    info = {"checkpoint": str(checkpoint), "model": state.get("model_name") or model_name,
            "kind": state.get("kind"), "epoch": state.get("epoch"), "split": shown,
            "dataset": data.get("dataset")}
    return Predictions(logits, embeddings, labels), info


def compare_summaries(first: dict[str, Any], second: dict[str, Any]) -> dict[str, float]:
    """``second - first`` for every scalar both analyses hold."""
    return {k: second[k] - v for k, v in first.items()
            if isinstance(v, (int, float)) and isinstance(second.get(k), (int, float))
            and k not in ("images", "epoch", "temperature")}


def _json_safe(value: Any) -> Any:
    """NaN and infinities become None (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def subsample(labels: Tensor, max_classes: int, max_points: int, seed: int = 0) -> Tensor:
    """Indices of a sample for a 2-D map: up to ``max_classes`` classes spread over the label range,
    then up to ``max_points`` of their samples drawn at random (sorted, so two models' maps of one
    split use the same images)."""
    classes = labels.unique()
    if len(classes) > max_classes:
        pick = torch.linspace(0, len(classes) - 1, max_classes).round().long()
        classes = classes[pick]
    index = torch.nonzero(torch.isin(labels, classes)).squeeze(1)
    if len(index) > max_points:
        generator = torch.Generator().manual_seed(seed)
        index = index[torch.randperm(len(index), generator=generator)[:max_points]].sort().values
    return index
