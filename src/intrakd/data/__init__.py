"""Datasets: the embedded digits, CIFAR-100, CIFAR-10, MNIST and Fashion-MNIST held as uint8 tensors
with batched augmentation; Tiny ImageNet, ImageNet and any class-folder tree decoded from image files."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from torch import Tensor

from intrakd.config import ConfigError, DataConfig
from intrakd.data.augment import Augmentation
from intrakd.data.badimages import unreadable_message
from intrakd.data.cifar import (
    cifar10_classes,
    cifar100_classes,
    coarse_labels,
    load_cifar10,
    load_cifar100,
    resolve_cifar100_classes,
)
from intrakd.data.digits import load_digits_splits
from intrakd.data.imagefolder import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TINY_IMAGENET_MEAN,
    TINY_IMAGENET_STD,
    ImageFolderSplit,
    Pipeline,
    UnreadableImageError,
    load_image_folders,
    load_tiny_imagenet,
    read_image,
    resolve_tiny_imagenet_dir,
)
from intrakd.data.mnist import IDX_DATASETS, idx_class_names, load_idx_dataset
from intrakd.data.tensor_data import (
    Batch,
    Batches,
    Split,
    TensorBatches,
    TensorDataset,
    first_per_class,
    select_classes,
    split_per_class,
)
from intrakd.progress import say

DATASETS = ("digits", "cifar100", "cifar10", "mnist", "fashion_mnist", "tiny_imagenet", "imagenet", "imagefolder")
ROOT_TENSOR_DATASETS = {"cifar100": "the folder holding 'cifar-100-python'",
                        "cifar10": "the folder holding 'cifar-10-batches-py'",
                        "mnist": "the folder holding MNIST/raw/ (torchvision's layout)",
                        "fashion_mnist": "the folder holding FashionMNIST/raw/ (torchvision's layout)"}
"""The datasets read into tensors from files under data.root, and what the root holds."""
FOLDER_DATASETS = ("tiny_imagenet", "imagenet", "imagefolder")


def folder_pipeline(cfg: DataConfig) -> Pipeline:
    """The augmentation of a folder dataset: its standard one, or what ``cfg`` asks for."""
    tiny = cfg.dataset == "tiny_imagenet"
    crop = cfg.augment if cfg.augment != "auto" else ("pad_crop" if tiny else "resized_crop")
    size = cfg.image_size or (64 if tiny else 224)
    mean, std = (TINY_IMAGENET_MEAN, TINY_IMAGENET_STD) if tiny else (IMAGENET_MEAN, IMAGENET_STD)
    return Pipeline(crop, size, mean, std)


def _load_folders(cfg: DataConfig) -> tuple[ImageFolderSplit, ImageFolderSplit]:
    if not cfg.root:
        layout = ("'tiny-imagenet-200' (or the folder holding it)" if cfg.dataset == "tiny_imagenet"
                  else "the folder holding train/<class>/ and val/<class>/")
        raise ConfigError(f"data.root is required for {cfg.dataset}: {layout} (e.g. --data-root PATH)")
    loader = load_tiny_imagenet if cfg.dataset == "tiny_imagenet" else load_image_folders
    return loader(cfg.root, folder_pipeline(cfg), cfg.workers)


def _load_tensor_dataset(dataset: str, root: str) -> tuple[TensorDataset, TensorDataset]:
    if dataset == "cifar100":
        return load_cifar100(root)
    return load_cifar10(root) if dataset == "cifar10" else load_idx_dataset(root, dataset)


def download(dataset: str, root: str) -> None:
    """Fetch ``dataset`` into ``root`` in its official layout with torchvision's downloader (which checks
    the archives' MD5), unless it is there already; only ever called for ``data.download=true``."""
    from torchvision import datasets

    try:
        _load_tensor_dataset(dataset, root)
        return
    except (FileNotFoundError, ValueError):
        pass
    make = {"cifar100": datasets.CIFAR100, "cifar10": datasets.CIFAR10, "mnist": datasets.MNIST,
            "fashion_mnist": datasets.FashionMNIST}[dataset]
    say(f"data.download=true: downloading {dataset} into {root} (torchvision)")
    make(root, train=True, download=True)


def build_datasets(cfg: DataConfig) -> tuple[Split, Split, str]:
    """(train, eval, eval split name) for a data configuration.

    With ``val_per_class > 0`` the last that many training images of every class form the eval
    split ("val") and are removed from training; otherwise the eval split is the dataset's own
    ("test" for digits and CIFAR-100, "val" for the folder datasets). Folder datasets are read in
    worker processes, or decoded once into tensors with ``in_memory``.
    """
    if cfg.dataset == "digits":
        train, test = load_digits_splits()
    elif cfg.dataset in ROOT_TENSOR_DATASETS:
        if not cfg.root:
            raise ConfigError(f"data.root is required for {cfg.dataset}: {ROOT_TENSOR_DATASETS[cfg.dataset]} "
                             "(e.g. --data-root ../shared/data)")
        if cfg.download:
            download(cfg.dataset, cfg.root)
        train, test = _load_tensor_dataset(cfg.dataset, cfg.root)
    elif cfg.dataset in FOLDER_DATASETS:
        train, test = _load_folders(cfg)
    else:
        raise ConfigError(f"unknown dataset {cfg.dataset!r}; available: {', '.join(DATASETS)}")
    classes = list(range(train.num_classes))
    if cfg.classes is not None:
        if cfg.dataset == "cifar100":
            classes = resolve_cifar100_classes(cfg.root, cfg.classes)
        elif all(isinstance(c, int) for c in cfg.classes):
            classes = list(cfg.classes)
        else:
            raise ConfigError(f"data.classes: class names are known for cifar100 only; give {cfg.dataset}'s "
                             "classes as indices")
        train, test = select_classes(train, classes), select_classes(test, classes)
    if cfg.image_size is not None and isinstance(train, TensorDataset):
        train, test = train.resized(cfg.image_size), test.resized(cfg.image_size)
    eval_set, split = test, "val" if cfg.dataset in FOLDER_DATASETS else "test"
    if cfg.val_per_class:
        train_idx, val_idx = split_per_class(train.labels, train.num_classes, cfg.val_per_class)
        train, eval_set, split = train.subset(train_idx), train.subset(val_idx), "val"
    if cfg.train_per_class:
        train = train.subset(first_per_class(train.labels, train.num_classes, cfg.train_per_class))
    if cfg.eval_per_class:
        eval_set = eval_set.subset(first_per_class(eval_set.labels, eval_set.num_classes, cfg.eval_per_class))
    if cfg.labels == "coarse":  # after the per-class counts: they count per fine class
        to_coarse, groups = coarse_labels(cfg.root, classes)
        train, eval_set = (dataclasses.replace(part, labels=to_coarse[part.labels], num_classes=groups)
                           for part in (train, eval_set))
    unreadable: dict[str, str] = {}
    for part, where in ((train, "training"), (eval_set, split)):
        if isinstance(part, ImageFolderSplit):  # before any run folder is made
            part.bad_images = cfg.bad_images
            unreadable.update(part.find_unreadable(f"the {where} split of {cfg.root}"))
    if unreadable and cfg.bad_images == "error":
        raise UnreadableImageError(unreadable_message(unreadable, str(cfg.root)))
    if cfg.in_memory and isinstance(train, ImageFolderSplit):
        train, eval_set = train.to_tensors(), eval_set.to_tensors()
    return train, eval_set, split


def class_names(cfg: DataConfig) -> list[str]:
    """The name of every label of the data ``cfg`` describes, in label order: the digit, CIFAR-100's
    fine (or, with ``labels=coarse``, super-) class names, a folder dataset's class folder names; after
    ``data.classes`` picks and orders classes."""
    if cfg.dataset == "digits":
        names = [str(d) for d in range(10)]
    elif cfg.dataset == "cifar100":
        names = cifar100_classes(cfg.root)[0]
    elif cfg.dataset == "cifar10":
        names = cifar10_classes(cfg.root)
    elif cfg.dataset in IDX_DATASETS:
        names = idx_class_names(cfg.dataset)
    else:
        folder = (resolve_tiny_imagenet_dir(cfg.root) if cfg.dataset == "tiny_imagenet" else Path(cfg.root)) / "train"
        names = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    picked = (resolve_cifar100_classes(cfg.root, cfg.classes) if cfg.dataset == "cifar100" and cfg.classes
              else cfg.classes or range(len(names)))
    if cfg.labels == "coarse":
        coarse_names, coarse_of = cifar100_classes(cfg.root)[1:]
        return [coarse_names[g] for g in sorted({coarse_of[c] for c in picked})]
    return [names[c] for c in picked]


def eval_image(split: Split, path: str | Path) -> Tensor:
    """Image file ``path`` as ``split``'s evaluation reads its images: uint8 ``[C, H, W]`` after the
    folder pipeline's eval transform (a tensor-held split: resized to its images' side, grey when they
    are)."""
    if isinstance(split, ImageFolderSplit):
        pipeline = split.pipeline
    else:
        side = split.image_shape[1]
        pipeline = Pipeline("pad_crop", side, split.augmentation.mean, split.augmentation.std)
    image = read_image(path)
    return pipeline.eval_transform()(image.convert("L") if split.image_shape[0] == 1 else image)


__all__ = [
    "DATASETS",
    "FOLDER_DATASETS",
    "Augmentation",
    "Batch",
    "Batches",
    "ImageFolderSplit",
    "Pipeline",
    "Split",
    "TensorBatches",
    "TensorDataset",
    "UnreadableImageError",
    "build_datasets",
    "cifar100_classes",
    "class_names",
    "coarse_labels",
    "eval_image",
    "first_per_class",
    "folder_pipeline",
    "load_cifar100",
    "load_digits_splits",
    "load_image_folders",
    "load_tiny_imagenet",
    "resolve_cifar100_classes",
    "select_classes",
    "split_per_class",
]
