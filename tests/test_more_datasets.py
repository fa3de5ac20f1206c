"""CIFAR-10, MNIST and Fashion-MNIST read from their official file layouts (tiny fake copies here; no
download in tests), with their classes, statistics and a default model."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from intrakd.cli import main
from intrakd.config import DataConfig, StudentConfig, TeacherConfig, load_config
from intrakd.data import build_datasets, class_names
from intrakd.data.mnist import FASHION_MNIST_CLASSES
from intrakd.demo import DEMO_RECIPES
from intrakd.train import read_checkpoint

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def fake_cifar10(root: Path, per_batch: int = 10) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        entry = {b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 b"labels": [(i + j) % 10 for j in range(per_batch)], b"batch_label": name.encode()}
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [n.encode() for n in CIFAR10_NAMES]}))
    return folder


def _idx(array: np.ndarray) -> bytes:
    magic = 2051 if array.ndim == 3 else 2049
    return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape) + array.tobytes()


def fake_idx(root: Path, folder_name: str, train: int = 40, test: int = 20, gz: bool = False) -> Path:
    folder = root / folder_name / "raw"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for prefix, count in (("train", train), ("t10k", test)):
        for name, array in ((f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)),
                            (f"{prefix}-labels-idx1-ubyte", (np.arange(count) % 10).astype(np.uint8))):
            data = _idx(array)
            (folder / (name + ".gz" if gz else name)).write_bytes(gzip.compress(data) if gz else data)
    return folder


def test_cifar10_reads_the_official_batches_in_order(tmp_path):
    folder = fake_cifar10(tmp_path)
    train, test, split = build_datasets(DataConfig(dataset="cifar10", root=str(tmp_path)))
    assert (len(train), len(test), split, train.image_shape) == (50, 10, "test", (3, 32, 32))
    first = pickle.loads((folder / "data_batch_1").read_bytes(), encoding="bytes")
    assert torch.equal(train.images[0], torch.from_numpy(first[b"data"][0].reshape(3, 32, 32)))
    assert train.labels[:3].tolist() == [0, 1, 2] and train.labels[10].item() == 1  # batch 2 starts at label 1
    assert train.augmentation.mean == (0.4914, 0.4822, 0.4465)
    assert class_names(DataConfig(dataset="cifar10", root=str(folder), classes=[3, 5])) == ["cat", "dog"]


@pytest.mark.parametrize(("dataset", "folder", "gz"),
                         [("mnist", "MNIST", False), ("fashion_mnist", "FashionMNIST", True)])
def test_idx_datasets_read_torchvisions_layout_plain_or_gzipped(tmp_path, dataset, folder, gz):
    fake_idx(tmp_path, folder, gz=gz)
    train, test, _ = build_datasets(DataConfig(dataset=dataset, root=str(tmp_path)))
    assert (len(train), len(test), train.image_shape, train.num_classes) == (40, 20, (1, 28, 28), 10)
    assert train.labels[:12].tolist() == [*range(10), 0, 1]
    names = class_names(DataConfig(dataset=dataset, root=str(tmp_path)))
    assert names == ([str(d) for d in range(10)] if dataset == "mnist" else list(FASHION_MNIST_CLASSES))
    assert DEMO_RECIPES[dataset]["teacher_model"] == "digits_cnn"
    assert load_config(TeacherConfig, None, [f"data.dataset={dataset}"]).model == "digits_cnn"
    assert load_config(StudentConfig, None, [f"data.dataset={dataset}"]).model == "digits_cnn_small"


def test_missing_or_broken_files_are_exit_2_naming_the_layout(tmp_path, capsys):
    data = tmp_path / "data"
    assert main(["train-teacher", "data.dataset=mnist", f"data.root={data}", "--out", str(tmp_path / "r")]) == 2
    assert "MNIST/raw" in capsys.readouterr().err
    folder = fake_idx(data, "MNIST")
    (folder / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x03" + b"\x00" * 20)
    assert main(["train-teacher", "data.dataset=mnist", f"data.root={data}", "--out", str(tmp_path / "r")]) == 2
    assert "not an IDX file" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_a_run_on_fake_cifar10_records_its_class_names(tmp_path):
    fake_cifar10(tmp_path / "data", per_batch=20)
    out = tmp_path / "run"
    assert main(["train-teacher", "data.dataset=cifar10", f"data.root={tmp_path / 'data'}", "model=resnet8",
                 "data.batch_size=20", "optim.epochs=1", "intra.weight=0", "device=cpu", "--out", str(out)]) == 0
    assert read_checkpoint(out / "checkpoints" / "last.pt")["class_names"] == CIFAR10_NAMES
