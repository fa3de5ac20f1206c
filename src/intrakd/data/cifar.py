"""CIFAR-100 and CIFAR-10 from their official python layouts ("cifar-100-python", "cifar-10-batches-py":
a user's download or ../shared/data), read directly: torchvision's classes check each file's MD5 and
reject any other copy (e.g. a subset), and would download on their own."""

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
CIFAR10_AUGMENTATION = Augmentation(
    mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616), padding=4, flip=True
)
"""The training set's per-channel pixel mean and standard deviation."""
CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))


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


def _load_split(path: Path, label_key: str = "fine_labels", classes: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    name = f"CIFAR-{classes}"
    try:
        with path.open("rb") as f:
            entry = pickle.load(f, encoding="latin1")
    except Exception as err:
        raise ConfigError(f"{path} is not a readable {name} pickle ({type(err).__name__}: {err})") from err
    if not isinstance(entry, dict):
        raise ConfigError(f"{path}: expected a pickled dict, got {type(entry).__name__}")
    entry = {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}
    missing = {"data", label_key} - entry.keys()
    if missing:
        raise ConfigError(f"{path}: missing keys {sorted(missing)} (is this the {name} python version?)")
    data = np.asarray(entry["data"], dtype=np.uint8)
    labels = np.asarray(entry[label_key], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or data.shape[0] != labels.shape[0]:
        raise ConfigError(f"{path}: expected data of shape [N, 3072] and N labels, got {data.shape} and {labels.shape}")
    if labels.min() < 0 or labels.max() >= classes:
        raise ConfigError(f"{path}: labels must lie in 0..{classes - 1}, got {labels.min()}..{labels.max()}")
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


def resolve_cifar10_dir(root: str | Path) -> Path:
    """The folder holding ``data_batch_1..5`` and ``test_batch``: ``root`` or ``root/cifar-10-batches-py``."""
    root = Path(root).expanduser()
    for candidate in (root, root / CIFAR10_DIR):
        if all((candidate / name).is_file() for name in (*CIFAR10_TRAIN, "test_batch")):
            return candidate
    raise FileNotFoundError(
        f"CIFAR-10 not found at {root}: expected the files {', '.join(CIFAR10_TRAIN)} and test_batch of the "
        f"official '{CIFAR10_DIR}' download in {root} or in {root / CIFAR10_DIR}. Extract "
        "cifar-10-python.tar.gz there, pass --data-root / data.root, or set data.download=true.")


def cifar10_classes(root: str | Path) -> list[str]:
    """The ten class names of ``batches.meta`` (CIFAR-10's own, in label order)."""
    path = resolve_cifar10_dir(root) / "batches.meta"
    def text(value: str | bytes) -> str:
        return value.decode() if isinstance(value, bytes) else str(value)

    try:
        with path.open("rb") as f:
            meta = {text(k): v for k, v in pickle.load(f, encoding="latin1").items()}
        return [text(name) for name in meta["label_names"]]
    except (OSError, KeyError, pickle.UnpicklingError, TypeError, AttributeError) as err:
        raise ConfigError(f"{path}: cannot read CIFAR-10's class names ({type(err).__name__}: {err})") from err


def load_cifar10(root: str | Path) -> tuple[TensorDataset, TensorDataset]:
    """(train, test) of CIFAR-10 (the five training batches in order, then ``test_batch``) as uint8 tensors."""
    folder = resolve_cifar10_dir(root)
    parts = [_load_split(folder / name, "labels", 10) for name in CIFAR10_TRAIN]
    train = TensorDataset(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), 10, CIFAR10_AUGMENTATION)
    return train, TensorDataset(*_load_split(folder / "test_batch", "labels", 10), 10, CIFAR10_AUGMENTATION)
