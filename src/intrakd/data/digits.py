"""The embedded default dataset: scikit-learn's 8x8 handwritten digits (no download)."""

from __future__ import annotations

import numpy as np
import torch

from intrakd.data.augment import Augmentation
from intrakd.data.tensor_data import TensorDataset

DIGITS_TEST_FRACTION = 0.25
DIGITS_SPLIT_SEED = 0


def load_digits_splits() -> tuple[TensorDataset, TensorDataset]:
    """The fixed stratified (train, test) split of the digits: 1,347 / 450 images, 1 x 8 x 8 uint8."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    labels = digits.target.astype(np.int64)
    idx_train, idx_test = train_test_split(
        np.arange(len(labels)), test_size=DIGITS_TEST_FRACTION, stratify=labels, random_state=DIGITS_SPLIT_SEED
    )
    idx_train.sort()
    idx_test.sort()
    train_pixels = images[idx_train].astype(np.float64) / 255.0
    augmentation = Augmentation(mean=(float(train_pixels.mean()),), std=(float(train_pixels.std()),), padding=1,
                                flip=False)

    def split(index: np.ndarray) -> TensorDataset:
        return TensorDataset(torch.from_numpy(images[index]), torch.from_numpy(labels[index]), 10, augmentation)

    return split(idx_train), split(idx_test)
