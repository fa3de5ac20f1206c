"""MNIST and Fashion-MNIST from their official IDX files (``train-images-idx3-ubyte`` and the rest,
optionally gzipped) in ``root``, ``root/MNIST/raw`` or ``root/FashionMNIST/raw`` (torchvision's layout),
read directly: torchvision's classes want the files unzipped and its processed layout, and download on
their own."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from intrakd.config import ConfigError
from intrakd.data.augment import Augmentation
from intrakd.data.tensor_data import TensorDataset

IDX_DATASETS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
"""The grey 28x28 datasets and their folder in torchvision's layout (``<folder>/raw``)."""
IDX_AUGMENTATION = {
    "mnist": Augmentation(mean=(0.1307,), std=(0.3081,), padding=2, flip=False),
    "fashion_mnist": Augmentation(mean=(0.2860,), std=(0.3530,), padding=2, flip=True),
}
"""The training set's pixel mean and standard deviation; digits are not mirrored, clothes may be."""
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")
IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_MAGIC = {3: 2051, 1: 2049}  # unsigned bytes (0x08) with 3 or 1 dimensions


def idx_class_names(dataset: str) -> list[str]:
    """The names of the ten labels."""
    return [str(d) for d in range(10)] if dataset == "mnist" else list(FASHION_MNIST_CLASSES)


def _find(folder: Path, name: str) -> Path | None:
    return next((p for p in (folder / name, folder / f"{name}.gz") if p.is_file()), None)


def resolve_idx_dir(root: str | Path, dataset: str) -> Path:
    """The folder holding the four IDX files: ``root`` or ``root/<MNIST|FashionMNIST>/raw``."""
    root = Path(root).expanduser()
    names = [n for pair in IDX_FILES.values() for n in pair]
    for candidate in (root, root / IDX_DATASETS[dataset] / "raw"):
        if all(_find(candidate, n) for n in names):
            return candidate
    raise FileNotFoundError(
        f"{IDX_DATASETS[dataset]} not found at {root}: expected {', '.join(names)} (each optionally .gz) in "
        f"{root / IDX_DATASETS[dataset] / 'raw'} (torchvision's layout) or in {root}; pass --data-root / "
        "data.root, or set data.download=true.")


def read_idx(path: Path, dims: int) -> np.ndarray:
    """The uint8 array of an IDX file of ``dims`` dimensions (gzipped when its name ends in .gz)."""
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise ConfigError(f"{path} cannot be read ({type(err).__name__}: {err})") from err
    header = 4 + 4 * dims
    if len(data) < header or int.from_bytes(data[:4], "big") != _MAGIC[dims]:
        raise ConfigError(f"{path} is not an IDX file of unsigned bytes with {dims} dimension(s)")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    if len(data) - header != int(np.prod(shape)):
        raise ConfigError(f"{path}: the header announces shape {shape} but the file holds {len(data) - header} values")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _split(folder: Path, part: str, augmentation: Augmentation) -> TensorDataset:
    images_file, labels_file = (_find(folder, n) for n in IDX_FILES[part])
    images, labels = read_idx(images_file, 3), read_idx(labels_file, 1)
    if images.shape[0] != labels.shape[0]:
        raise ConfigError(f"{images_file} holds {images.shape[0]} images but {labels_file} {labels.shape[0]} labels")
    if labels.size and labels.max() >= 10:
        raise ConfigError(f"{labels_file}: labels must lie in 0..9, got up to {labels.max()}")
    return TensorDataset(torch.from_numpy(images[:, None].copy()), torch.from_numpy(labels.astype(np.int64)),
                         10, augmentation)


def load_idx_dataset(root: str | Path, dataset: str) -> tuple[TensorDataset, TensorDataset]:
    """(train, test) of ``dataset`` ('mnist' or 'fashion_mnist') as uint8 ``[N, 1, 28, 28]`` tensors."""
    folder = resolve_idx_dir(root, dataset)
    return _split(folder, "train", IDX_AUGMENTATION[dataset]), _split(folder, "test", IDX_AUGMENTATION[dataset])
