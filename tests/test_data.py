"""Datasets as uint8 tensors, batched augmentation, splits, and the errors for bad dataset folders."""

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from intrakd.config import ConfigError, DataConfig, TeacherConfig, load_config
from intrakd.data import Augmentation, build_datasets, load_cifar100, load_digits_splits
from intrakd.data.augment import crop_at, flip_where
from intrakd.models import ModelInput

SHARED_CIFAR = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_cifar = pytest.mark.skipif(not (SHARED_CIFAR / "cifar-100-python" / "train").exists(),
                                 reason=f"real CIFAR-100 not present at {SHARED_CIFAR}")


def test_digits_split_is_fixed_and_stratified():
    train, test = load_digits_splits()
    assert (len(train), len(test)) == (1347, 450)
    assert train.images.dtype == torch.uint8 and train.images.shape[1:] == (1, 8, 8)
    assert torch.bincount(test.labels).tolist() == torch.bincount(load_digits_splits()[1].labels).tolist()
    totals = torch.bincount(torch.cat([train.labels, test.labels]))
    assert ((torch.bincount(test.labels) - totals * 0.25).abs() <= 1).all()  # stratified
    assert int(train.images.max()) == 255


def test_random_crop_matches_pad_and_slice():
    images = torch.randint(0, 256, (6, 3, 5, 7), dtype=torch.uint8)
    draws = Augmentation((0.0,), (1.0,), padding=2, flip=False).draw(6, torch.Generator().manual_seed(0))
    out = crop_at(images, 2, draws.crop)
    offsets = torch.randint(0, 5, (2, 6), generator=torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for i in range(6):
        dy, dx = offsets[0, i], offsets[1, i]
        assert torch.equal(out[i], padded[i, :, dy:dy + 5, dx:dx + 7])


def test_random_flip_flips_about_half():
    images = torch.stack([torch.zeros(1000), torch.ones(1000)], 1).to(torch.uint8).reshape(1000, 1, 1, 2)
    draws = Augmentation((0.0,), (1.0,), padding=0).draw(1000, torch.Generator().manual_seed(0))
    out = flip_where(images, draws.flip)
    flipped = (out[:, 0, 0, 0] == images[:, 0, 0, 1])
    assert 400 < flipped.sum() < 600
    assert torch.equal(out[~flipped], images[~flipped])


def test_normalize_and_two_independent_views():
    images = torch.full((4, 1, 3, 3), 255, dtype=torch.uint8)
    assert torch.allclose(ModelInput((0.5,), (0.25,))(images), torch.full((4, 1, 3, 3), 2.0))
    train, _ = load_digits_splits()
    batches = train.train_batches(64, 2, seed=0, device=torch.device("cpu"))
    batches.set_epoch(0)
    first = next(iter(batches))
    assert len(first.views) == 2 and first.views[0].shape == (64, 1, 8, 8)
    assert first.views[0].dtype == torch.uint8  # each model normalises the view to its own input
    assert not torch.equal(first.views[0], first.views[1])
    again = next(iter(batches))
    assert torch.equal(first.views[0], again.views[0])  # same (seed, epoch): same stream
    batches.set_epoch(1)
    assert not torch.equal(next(iter(batches)).labels, first.labels)


def test_validation_split_and_reduced_training_set():
    cfg = DataConfig(dataset="digits", val_per_class=10, train_per_class=20)
    train, val, split = build_datasets(cfg)
    assert split == "val" and len(val) == 100 and len(train) == 200
    assert torch.bincount(val.labels).tolist() == [10] * 10


def write_fake_cifar(root: Path, per_class=2, bytes_keys=False):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for split in ("train", "test"):
        labels = [c for c in range(100) for _ in range(per_class)]
        entry = {"data": np.random.default_rng(0).integers(0, 256, (len(labels), 3072), dtype=np.uint8),
                 "fine_labels": labels, "coarse_labels": [0] * len(labels)}
        if bytes_keys:
            entry = {k.encode(): v for k, v in entry.items()}
        (folder / split).write_bytes(pickle.dumps(entry))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"class{c}" for c in range(100)],
                                                "coarse_label_names": [f"super{g}" for g in range(20)]}))
    return folder


@pytest.mark.parametrize("bytes_keys", [False, True])
def test_cifar_layout_with_str_or_bytes_keys(tmp_path, bytes_keys):
    folder = write_fake_cifar(tmp_path, bytes_keys=bytes_keys)
    for root in (tmp_path, folder):
        train, _ = load_cifar100(root)
        assert train.images.shape == (200, 3, 32, 32) and train.num_classes == 100


def test_cifar_missing_folder_names_path_and_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"CIFAR-100 not found at .*nowhere.*'train' and 'test'"):
        load_cifar100(tmp_path / "nowhere")


def test_cifar_malformed_files(tmp_path):
    folder = write_fake_cifar(tmp_path)
    (folder / "train").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match=r"train is not a readable CIFAR-100 pickle"):
        load_cifar100(tmp_path)
    (folder / "train").write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8)}))
    with pytest.raises(ValueError, match=r"missing keys \['fine_labels'\]"):
        load_cifar100(tmp_path)
    (folder / "train").write_bytes(pickle.dumps({"data": np.zeros((2, 100), np.uint8), "fine_labels": [0, 1]}))
    with pytest.raises(ValueError, match=r"expected data of shape \[N, 3072\]"):
        load_cifar100(tmp_path)


def test_cifar_requires_root():
    with pytest.raises(ValueError, match="data.root is required"):
        build_datasets(DataConfig(dataset="cifar100"))


@needs_cifar
def test_real_cifar100_loads_with_published_statistics():
    train, test = load_cifar100(SHARED_CIFAR)
    assert (len(train), len(test)) == (50000, 10000)
    assert torch.bincount(train.labels).tolist() == [500] * 100
    mean = train.images.float().mean(dim=(0, 2, 3)) / 255
    torch.testing.assert_close(mean, torch.tensor([0.5071, 0.4865, 0.4409]), atol=1e-3, rtol=0)


def test_a_subset_of_classes_is_relabelled_in_the_order_given():
    full_train, full_test, _ = build_datasets(DataConfig(dataset="digits"))
    train, test, _ = build_datasets(DataConfig(dataset="digits", classes=[7, 2, 5]))
    assert train.num_classes == test.num_classes == 3
    for new, old in enumerate([7, 2, 5]):
        assert torch.equal(train.images[train.labels == new], full_train.images[full_train.labels == old])
        assert torch.equal(test.images[test.labels == new], full_test.images[full_test.labels == old])
    assert len(train) == sum(int((full_train.labels == c).sum()) for c in (7, 2, 5))


@pytest.mark.parametrize("classes, message", [
    ([3, 3], "names a class twice"), ([4, 10], "10 is not a class index"), ([4], "at least 2 classes"),
    (["seven", 3], "class names are known for cifar100 only"),
])
def test_bad_class_subsets_are_named(classes, message):
    with pytest.raises(ValueError, match=message):
        build_datasets(DataConfig(dataset="digits", classes=classes))


def test_cifar_classes_by_fine_name_and_superclass(tmp_path):
    folder = write_fake_cifar(tmp_path)
    entry = pickle.loads((folder / "train").read_bytes())
    entry["coarse_labels"] = [c // 5 for c in entry["fine_labels"]]
    (folder / "train").write_bytes(pickle.dumps(entry))
    fine = [f"class{c}" for c in range(100)]
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": fine,
                                                "coarse_label_names": [f"super{g}" for g in range(20)]}))
    train, test, _ = build_datasets(DataConfig(dataset="cifar100", root=str(tmp_path),
                                               classes=["super3", "class99", 0]))
    assert train.num_classes == 7 and len(train) == 14 and len(test) == 14
    original, _ = load_cifar100(tmp_path)
    for new, old in enumerate([15, 16, 17, 18, 19, 99, 0]):
        assert torch.equal(train.images[train.labels == new], original.images[original.labels == old])
    with pytest.raises(ValueError, match="neither a CIFAR-100 class nor a superclass; superclasses: super0"):
        build_datasets(DataConfig(dataset="cifar100", root=str(tmp_path), classes=["vehicles"]))


def write_fake_cifar_with_superclasses(root: Path, per_class=2) -> Path:
    """Fake CIFAR-100 whose fine class c lies in superclass ``c % 20`` (not c // 5: the order matters)."""
    folder = write_fake_cifar(root, per_class=per_class)
    for split in ("train", "test"):
        entry = pickle.loads((folder / split).read_bytes())
        entry["coarse_labels"] = [c % 20 for c in entry["fine_labels"]]
        (folder / split).write_bytes(pickle.dumps(entry))
    return folder


def test_coarse_labels_are_the_superclasses(tmp_path):
    write_fake_cifar_with_superclasses(tmp_path, per_class=4)
    original, _ = load_cifar100(tmp_path)
    train, test, split = build_datasets(DataConfig(dataset="cifar100", root=str(tmp_path), labels="coarse"))
    assert split == "test" and train.num_classes == test.num_classes == 20 and len(train) == 400
    assert torch.equal(train.labels, original.labels % 20) and torch.equal(train.images, original.images)
    # a subset: the superclasses present, relabelled 0..g-1 in superclass order, not in the order given
    train, _, _ = build_datasets(DataConfig(dataset="cifar100", root=str(tmp_path), labels="coarse",
                                            classes=["class47", "class3", "class23"]))
    assert train.num_classes == 2
    for fine, coarse in ((47, 1), (3, 0), (23, 0)):  # superclasses 7, 3, 3 -> 1, 0, 0
        assert (train.labels[(train.images == original.images[original.labels == fine][0]).flatten(1)
                             .all(1)] == coarse).all()
    assert torch.bincount(train.labels).tolist() == [8, 4]


def test_coarse_labels_count_images_per_fine_class(tmp_path):
    write_fake_cifar_with_superclasses(tmp_path, per_class=6)
    train, val, split = build_datasets(DataConfig(dataset="cifar100", root=str(tmp_path), labels="coarse",
                                                  classes=["super1", "super2"], val_per_class=2,
                                                  train_per_class=3))
    assert split == "val" and train.num_classes == 2
    assert torch.bincount(train.labels).tolist() == [5 * 3, 5 * 3]  # 5 fine classes x 3 images each
    assert torch.bincount(val.labels).tolist() == [5 * 2, 5 * 2]


def test_coarse_labels_need_two_superclasses_and_cifar100(tmp_path):
    write_fake_cifar_with_superclasses(tmp_path)
    with pytest.raises(ValueError, match="lie in 1 superclass; name classes of at least 2 superclasses"):
        build_datasets(DataConfig(dataset="cifar100", root=str(tmp_path), labels="coarse", classes=["super4"]))
    with pytest.raises(ConfigError, match="data.labels=coarse needs cifar100's superclass labels; digits"):
        load_config(TeacherConfig, overrides=["data.dataset=digits", "data.labels=coarse"])


def test_tensor_images_resized_once_at_load_time():
    train, test, _ = build_datasets(DataConfig(dataset="digits", image_size=16))
    native, _, _ = build_datasets(DataConfig(dataset="digits"))
    assert train.images.shape[1:] == (1, 16, 16) and test.images.shape[1:] == (1, 16, 16)
    assert train.images.dtype == torch.uint8
    assert train.augmentation.padding == 2 * native.augmentation.padding  # the padding scales with the side
    batch = next(iter(train.train_batches(8, 2, seed=0, device=torch.device("cpu"))))
    assert batch.views[0].shape == (8, 1, 16, 16) and batch.indices is not None


@needs_cifar
def test_real_cifar_superclasses_at_16_pixels():
    cfg = DataConfig(dataset="cifar100", root=str(SHARED_CIFAR), classes=["aquatic_mammals", "fish"],
                     image_size=16, val_per_class=50)
    train, val, split = build_datasets(cfg)
    assert split == "val" and train.num_classes == 10
    assert len(train) == 10 * 450 and len(val) == 10 * 50 and train.images.shape[1:] == (3, 16, 16)
    assert train.augmentation.padding == 2


@needs_cifar
def test_real_cifar_coarse_labels_are_the_official_ones():
    train, _, _ = build_datasets(DataConfig(dataset="cifar100", root=str(SHARED_CIFAR), labels="coarse"))
    with (SHARED_CIFAR / "cifar-100-python" / "train").open("rb") as f:
        official = pickle.load(f, encoding="latin1")["coarse_labels"]
    assert train.num_classes == 20 and train.labels.tolist() == official
