"""CIFAR-100 from the official "cifar-100-python" layout (a user's download or ../shared/data)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from intrakd.config import ConfigError
from intrakd.data.augment import Augmentation
from intrakd.data.tensor_data import TensorDataset

CIFAR100_AUGMENTATION = Augmentation(
    mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762), padding=4, flip=True
)


def resolve_cifar100_dir(root: str | Path) -> Path:
    """The folder holding ``train``/``test``: ``root`` itself or ``root/cifar-100-python``."""
    root = Path(root).expanduser()
    for candidate in (root, root / "cifar-100-python"):
        if (candidate / "train").is_file() and (candidate / "test").is_file():
            return candidate
    raise FileNotFoundError(
        f"CIFAR-100 not found at {root}: expected the files 'train' and 'test' of the official "
        f"'cifar-100-python' download in {root} or in {root / 'cifar-100-python'}. "
        "Download and extract cifar-100-python.tar.gz there, or pass --data-root / data.root."
    )


def _load_split(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        with path.open("rb") as f:
            entry = pickle.load(f, encoding="latin1")
    except Exception as err:
        raise ConfigError(f"{path} is not a readable CIFAR-100 pickle ({type(err).__name__}: {err})") from err
    if not isinstance(entry, dict):
        raise ConfigError(f"{path}: expected a pickled dict, got {type(entry).__name__}")
    entry = {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}
    missing = {"data", "fine_labels"} - entry.keys()
    if missing:
        raise ConfigError(f"{path}: missing keys {sorted(missing)} (is this the CIFAR-100 python version?)")
    data = np.asarray(entry["data"], dtype=np.uint8)
    labels = np.asarray(entry["fine_labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or data.shape[0] != labels.shape[0]:
        raise ConfigError(f"{path}: expected data of shape [N, 3072] and N labels, got {data.shape} and {labels.shape}")
    if labels.min() < 0 or labels.max() >= 100:
        raise ConfigError(f"{path}: fine labels must lie in 0..99, got {labels.min()}..{labels.max()}")
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    return images, torch.from_numpy(labels)


def cifar100_classes(root: str | Path) -> tuple[list[str], list[str], list[int]]:
    """(fine class names, superclass names, superclass index of every fine class) from the ``meta``
    file and the training labels of the dataset under ``root``."""
    folder = resolve_cifar100_dir(root)
    try:
        with (folder / "meta").open("rb") as f:
            meta = pickle.load(f, encoding="latin1")
        with (folder / "train").open("rb") as f:
            train = pickle.load(f, encoding="latin1")
        fine_names, coarse_names = list(meta["fine_label_names"]), list(meta["coarse_label_names"])
        pairs = dict(zip(train["fine_labels"], train["coarse_labels"]))
    except (OSError, KeyError, pickle.UnpicklingError, TypeError) as err:
        raise ConfigError(f"{folder}: cannot read the class names and superclasses from 'meta' and 'train' "
                         f"({type(err).__name__}: {err})") from err
    return fine_names, coarse_names, [int(pairs[c]) for c in range(len(fine_names))]


def resolve_cifar100_classes(root: str | Path, classes: list[int | str]) -> list[int]:
    """Fine class indices of ``classes``: indices kept, fine class names looked up, and a superclass
    name replaced by its fine classes (in index order)."""
    fine_names, coarse_names, coarse_of = cifar100_classes(root)
    resolved: list[int] = []
    for item in classes:
        if isinstance(item, int):
            resolved.append(item)
        elif item in fine_names:
            resolved.append(fine_names.index(item))
        elif item in coarse_names:
            resolved.extend(c for c, g in enumerate(coarse_of) if g == coarse_names.index(item))
        else:
            raise ConfigError(f"data.classes: {item!r} is neither a CIFAR-100 class nor a superclass; "
                             f"superclasses: {', '.join(coarse_names)}")
    return resolved


def coarse_labels(root: str | Path, fine: list[int]) -> tuple[torch.Tensor, int]:
    """(label map, number of superclasses) for training on superclasses: entry ``i`` of the map is the
    coarse label of the class labelled ``i`` now (fine class ``fine[i]``); the superclasses present are
    relabelled ``0..g-1`` in superclass index order (all 100 classes: the official coarse labels)."""
    _, _, coarse_of = cifar100_classes(root)
    present = sorted({coarse_of[c] for c in fine})
    if len(present) < 2:
        raise ConfigError(f"data.labels=coarse: data.classes lie in {len(present)} superclass; name classes "
                         "of at least 2 superclasses (with one, cross-entropy is zero)")
    return torch.tensor([present.index(coarse_of[c]) for c in fine]), len(present)


def load_cifar100(root: str | Path) -> tuple[TensorDataset, TensorDataset]:
    """(train, test) of CIFAR-100 as uint8 tensors, with the standard augmentation."""
    folder = resolve_cifar100_dir(root)
    train = TensorDataset(*_load_split(folder / "train"), 100, CIFAR100_AUGMENTATION)
    test = TensorDataset(*_load_split(folder / "test"), 100, CIFAR100_AUGMENTATION)
    return train, test
