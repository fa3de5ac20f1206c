"""Datasets: the embedded digits and CIFAR-100, held as uint8 tensors with batched augmentation."""

from __future__ import annotations

from intrakd.config import DataConfig
from intrakd.data.augment import Augmentation
from intrakd.data.cifar import load_cifar100
from intrakd.data.digits import load_digits_splits
from intrakd.data.tensor_data import (
    Batch,
    Batches,
    Split,
    TensorBatches,
    TensorDataset,
    first_per_class,
    split_per_class,
)

DATASETS = ("digits", "cifar100")


def build_datasets(cfg: DataConfig) -> tuple[Split, Split, str]:
    """(train, eval, eval split name) for a data configuration.

    With ``val_per_class > 0`` the last that many training images of every class form the eval
    split ("val") and are removed from training; otherwise the eval split is "test".
    """
    if cfg.dataset == "digits":
        train, test = load_digits_splits()
    elif cfg.dataset == "cifar100":
        if not cfg.root:
            raise ValueError("data.root is required for cifar100: the folder holding 'cifar-100-python' "
                             "(e.g. --data-root ../shared/data)")
        train, test = load_cifar100(cfg.root)
    else:
        raise ValueError(f"unknown dataset {cfg.dataset!r}; available: {', '.join(DATASETS)}")
    eval_set, split = test, "test"
    if cfg.val_per_class:
        train_idx, val_idx = split_per_class(train.labels, train.num_classes, cfg.val_per_class)
        train, eval_set, split = train.subset(train_idx), train.subset(val_idx), "val"
    if cfg.train_per_class:
        train = train.subset(first_per_class(train.labels, train.num_classes, cfg.train_per_class))
    if cfg.eval_per_class:
        eval_set = eval_set.subset(first_per_class(eval_set.labels, eval_set.num_classes, cfg.eval_per_class))
    return train, eval_set, split


__all__ = [
    "DATASETS",
    "Augmentation",
    "Batch",
    "Batches",
    "Split",
    "TensorBatches",
    "TensorDataset",
    "build_datasets",
    "first_per_class",
    "load_cifar100",
    "load_digits_splits",
    "split_per_class",
]
