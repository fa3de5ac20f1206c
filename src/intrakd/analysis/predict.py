"""``intrakd predict``: the classes a checkpoint gives image files, with their probabilities; each file
read as the run's evaluation reads its images, and normalised alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from intrakd.analysis.analyze import load_split
from intrakd.config import ConfigError
from intrakd.data import eval_image
from intrakd.runs import data_input
from intrakd.train import classifier_from_checkpoint, read_checkpoint


def predict_images(checkpoint: str | Path, images: list[str], top: int | None = None,
                   data_root: str | None = None) -> list[dict[str, Any]]:
    """For every image file, the ``top`` (default: 5, or every class of a smaller model) most probable
    classes of the checkpoint's model:
    ``[{"image", "top": [{"class", "index", "probability"}, ...]}]``."""
    state = read_checkpoint(checkpoint)
    names = state.get("class_names")
    data = (state.get("config") or {}).get("data")
    if not names or not data:
        raise ConfigError(f"checkpoint {checkpoint} records no class names (written before intrakd recorded them, "
                          "or not by an intrakd run): predict needs a checkpoint of a run trained with this version")
    top = min(5, len(names)) if top is None else top
    if not 1 <= top <= len(names):
        raise ConfigError(f"--top must lie in 1..{len(names)} (the model's classes), got {top}")
    split = load_split({**data, "in_memory": False}, "test", data_root)
    batch = torch.stack([eval_image(split, path) for path in images])  # every file read before any output
    model, _ = classifier_from_checkpoint(checkpoint, None, len(names), split.image_shape, data_input(split))
    with torch.no_grad():  # the model turns the uint8 images into its own input
        probabilities = torch.softmax(model.eval()(batch).logits.float(), dim=1)
    values, indices = probabilities.topk(top, dim=1)
    return [{"image": str(path), "top": [{"class": names[i], "index": i, "probability": p}
                                         for p, i in zip(v.tolist(), k.tolist())]}
            for path, v, k in zip(images, values, indices)]
