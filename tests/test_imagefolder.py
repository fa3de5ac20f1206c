"""Folder datasets: Tiny ImageNet's official layout, ImageNet-style class folders, augmentation,
determinism, the in-memory option, and every error a user can meet."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from intrakd.cli import main
from intrakd.config import ConfigError, DataConfig, TeacherConfig, load_config
from intrakd.data import ImageFolderSplit, TensorDataset, build_datasets, folder_pipeline, imagefolder
from intrakd.data.imagefolder import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TINY_IMAGENET_MEAN,
    TINY_IMAGENET_STD,
    UnreadableImageError,
)
from intrakd.runs import data_input

CPU = torch.device("cpu")
WNIDS = ["n03000000", "n01000000", "n02000000"]  # wnids.txt order is not sorted; labels follow sorted order


def noise(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def save(array: np.ndarray, path: Path) -> None:
    """Lossless PNG data (whatever the file's extension: PIL reads images by content)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")


def make_tiny_imagenet(root: Path, per_class: int = 4, val: int = 6) -> dict[str, np.ndarray]:
    """Tiny ImageNet's official layout under ``root/tiny-imagenet-200``; returns every image by path."""
    rng = np.random.default_rng(0)
    folder = root / "tiny-imagenet-200"
    images = {}
    for wnid in WNIDS:
        for i in range(per_class):
            path = folder / "train" / wnid / "images" / f"{wnid}_{i}.JPEG"
            images[str(path)] = noise(rng, 64, 64)
            save(images[str(path)], path)
        (folder / "train" / wnid / f"{wnid}_boxes.txt").write_text("")  # in the official layout; not an image
    lines = []
    for j in range(val):
        path = folder / "val" / "images" / f"val_{j}.JPEG"
        images[str(path)] = noise(rng, 64, 64)
        save(images[str(path)], path)
        lines.append(f"val_{j}.JPEG\t{WNIDS[j % 3]}\t0\t0\t63\t63")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    (folder / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    return images


def make_image_folders(root: Path, classes=("cat", "dog"), per_class: int = 3) -> dict[str, np.ndarray]:
    """``root/train/<class>/*`` and ``root/val/<class>/*`` with images of varied sizes."""
    rng = np.random.default_rng(1)
    images = {}
    for split, count in (("train", per_class), ("val", 2)):
        for c in classes:
            for i in range(count):
                path = root / split / c / f"img{i}.{'png' if i % 2 else 'JPEG'}"
                images[str(path)] = noise(rng, 20 + 3 * i, 24 + 5 * i)
                save(images[str(path)], path)
    return images


def tiny(root: Path, **kwargs) -> DataConfig:
    return DataConfig(**{"dataset": "tiny_imagenet", "root": str(root), "workers": 0, **kwargs})


def normalized(array: np.ndarray, mean, std) -> torch.Tensor:
    image = torch.from_numpy(array).permute(2, 0, 1).float() / 255.0
    return (image - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def test_tiny_imagenet_official_layout(tmp_path):
    images = make_tiny_imagenet(tmp_path)
    train, val, split = build_datasets(tiny(tmp_path))
    assert isinstance(train, ImageFolderSplit) and split == "val"
    assert (len(train), len(val), train.num_classes, val.num_classes) == (12, 6, 3, 3)
    order = sorted(WNIDS)
    for path, label in zip(train.paths, train.labels.tolist()):
        assert f"/train/{order[label]}/images/" in path
    # val labels come from val_annotations.txt: val_j is WNIDS[j % 3]
    for path, label in zip(val.paths, val.labels.tolist()):
        j = int(Path(path).stem.split("_")[1])
        assert order[label] == WNIDS[j % 3]
    # eval images: the decoded pixels, fed to a model of the data's own input: normalised with Tiny
    # ImageNet's statistics, nothing else
    batches = list(val.eval_batches(4, CPU))
    assert [b[0].shape for b in batches] == [(4, 3, 64, 64), (2, 3, 64, 64)]
    got = data_input(val)(torch.cat([b[0] for b in batches]))
    expected = torch.stack([normalized(images[p], TINY_IMAGENET_MEAN, TINY_IMAGENET_STD) for p in val.paths])
    torch.testing.assert_close(got, expected)
    assert torch.equal(torch.cat([b[1] for b in batches]), val.labels)


def test_tiny_imagenet_root_may_be_the_parent_or_the_folder_and_val_may_be_sorted(tmp_path):
    make_tiny_imagenet(tmp_path)
    folder = tmp_path / "tiny-imagenet-200"
    assert len(build_datasets(tiny(folder))[0]) == 12
    # a val split already sorted into val/<wnid>/ folders (a common reorganisation) loads too
    (folder / "val" / "val_annotations.txt").unlink()
    for j, image in enumerate(sorted((folder / "val" / "images").iterdir())):
        target = folder / "val" / WNIDS[j % 3] / image.name
        target.parent.mkdir(exist_ok=True)
        image.rename(target)
    (folder / "val" / "images").rmdir()
    assert len(build_datasets(tiny(folder))[1]) == 6


def find_crop(view: torch.Tensor, candidates: torch.Tensor, padding: int) -> list[tuple[int, int, int, bool]]:
    """Every (image, top, left, flipped) whose zero-padded crop equals ``view`` (a slow search)."""
    found = []
    size = view.shape[-1]
    padded = torch.nn.functional.pad(candidates, (padding,) * 4)
    for n in range(candidates.shape[0]):
        for top in range(2 * padding + 1):
            for left in range(2 * padding + 1):
                crop = padded[n, :, top : top + size, left : left + size]
                for flipped in (False, True):
                    if torch.equal(crop.flip(-1) if flipped else crop, view):
                        found.append((n, top, left, flipped))
    return found


def test_training_views_are_padded_crops_and_flips_of_the_right_image(tmp_path):
    images = make_tiny_imagenet(tmp_path, per_class=2)
    train, _, _ = build_datasets(tiny(tmp_path))
    originals = torch.stack([torch.from_numpy(images[p]).permute(2, 0, 1) for p in train.paths])
    batches = train.train_batches(3, views=2, seed=0, device=CPU)
    batches.set_epoch(0)
    seen, flips, offsets = [], set(), set()
    for batch in batches:
        assert len(batch.views) == 2 and all(v.shape == (3, 3, 64, 64) for v in batch.views)
        for b in range(3):
            views = []
            for view in batch.views:
                assert view.dtype == torch.uint8  # each model normalises it to its own input
                (n, top, left, flipped), = find_crop(view[b], originals, padding=8)
                assert train.labels[n] == batch.labels[b]
                views.append(n)
                flips.add(flipped)
                offsets.add((top, left))
            assert views[0] == views[1]  # both views are of one image
            seen.append(views[0])
    assert sorted(seen) == list(range(6))  # every image once per epoch
    assert flips == {False, True} and len(offsets) > 3


def batches_of(split, epoch: int, seed: int = 0, views: int = 2) -> list:
    batches = split.train_batches(4, views=views, seed=seed, device=CPU)
    batches.set_epoch(epoch)
    return [(torch.stack(b.views), b.labels) for b in batches]


def same(a: list, b: list) -> bool:
    return all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b, strict=True))


def test_order_and_augmentation_depend_only_on_seed_and_epoch(tmp_path):
    make_tiny_imagenet(tmp_path)
    train, _, _ = build_datasets(tiny(tmp_path))
    first = batches_of(train, epoch=3)
    assert len(first) == 3  # 12 images, batches of 4
    assert same(first, batches_of(train, epoch=3))
    with_workers = ImageFolderSplit(train.paths, train.labels, train.num_classes, train.pipeline, workers=2)
    assert same(first, batches_of(with_workers, epoch=3))  # whatever the number of workers
    assert not same(first, batches_of(train, epoch=4))
    assert not same(first, batches_of(train, epoch=3, seed=1))
    views = first[0][0]
    assert not torch.equal(views[0], views[1])  # two independently drawn views


def test_in_memory_holds_the_decoded_pixels_and_evaluates_alike(tmp_path):
    images = make_tiny_imagenet(tmp_path)
    folder_train, folder_val, _ = build_datasets(tiny(tmp_path))
    train, val, split = build_datasets(tiny(tmp_path, in_memory=True))
    assert isinstance(train, TensorDataset) and split == "val"
    expected = torch.stack([torch.from_numpy(images[p]).permute(2, 0, 1) for p in folder_train.paths])
    assert torch.equal(train.images, expected) and torch.equal(train.labels, folder_train.labels)
    assert train.augmentation.padding == 8 and train.augmentation.flip
    for (a, la), (b, lb) in zip(val.eval_batches(4, CPU), folder_val.eval_batches(4, CPU), strict=True):
        assert torch.equal(a, b) and torch.equal(la, lb)
    # reduced protocols subset before decoding
    reduced, _, _ = build_datasets(tiny(tmp_path, in_memory=True, train_per_class=1))
    assert reduced.images.shape[0] == 3 and reduced.labels.tolist() == [0, 1, 2]


def test_image_folders_imagenet_recipe(tmp_path):
    images = make_image_folders(tmp_path)
    cfg = DataConfig(dataset="imagenet", root=str(tmp_path), workers=0, image_size=16)
    pipeline = folder_pipeline(cfg)
    assert (pipeline.crop, pipeline.image_size, pipeline.mean, pipeline.std) == (
        "resized_crop", 16, IMAGENET_MEAN, IMAGENET_STD)
    assert folder_pipeline(DataConfig(dataset="imagenet")).image_size == 224
    train, val, split = build_datasets(cfg)
    assert (len(train), len(val), train.num_classes, split) == (6, 4, 2, "val")
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    # eval: shorter side resized to round(16 / 0.875) = 18, centre crop 16 (computed with PIL here)
    got = data_input(val)(torch.cat([b[0] for b in val.eval_batches(3, CPU)]))
    for k, path in enumerate(val.paths):
        image = Image.fromarray(images[path])
        w, h = image.size
        size = (18, int(18 * h / w)) if w <= h else (int(18 * w / h), 18)
        resized = image.resize(size, Image.BILINEAR)
        top, left = round((size[1] - 16) / 2), round((size[0] - 16) / 2)
        crop = np.array(resized)[top : top + 16, left : left + 16]
        torch.testing.assert_close(got[k], normalized(crop, IMAGENET_MEAN, IMAGENET_STD))
    batch = next(iter(train.train_batches(3, views=2, seed=0, device=CPU)))
    assert [v.shape for v in batch.views] == [(3, 3, 16, 16)] * 2


def test_imagefolder_with_pad_crop_resizes_small_images(tmp_path):
    make_image_folders(tmp_path)
    cfg = DataConfig(dataset="imagefolder", root=str(tmp_path), workers=0, image_size=32, augment="pad_crop",
                     in_memory=True)
    train, val, _ = build_datasets(cfg)
    assert train.images.shape == (6, 3, 32, 32) and val.images.shape == (4, 3, 32, 32)
    assert train.augmentation.padding == 4


def test_folder_dataset_trains_a_teacher_through_the_cli(tmp_path):
    make_tiny_imagenet(tmp_path / "data")
    out = tmp_path / "teacher"  # beside the dataset: a run folder may not lie in what the run reads
    assert main(["train-teacher", "--out", str(out), "model=resnet8", "data.dataset=tiny_imagenet",
                 f"data.root={tmp_path / 'data'}", "data.batch_size=4", "data.workers=1", "optim.epochs=1",
                 "device=cpu", "intra.delta=-1"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["eval_split"] == "val" and summary["epochs"] == 1
    assert (out / "checkpoints" / "last.pt").is_file()


# ----- errors -----

def test_missing_root_and_missing_folders(tmp_path):
    with pytest.raises(ValueError, match="data.root is required for tiny_imagenet"):
        build_datasets(DataConfig(dataset="tiny_imagenet"))
    with pytest.raises(FileNotFoundError, match=r"Tiny ImageNet not found at .*nowhere: expected the official layout"):
        build_datasets(tiny(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"dataset folder .*nowhere does not exist"):
        build_datasets(DataConfig(dataset="imagenet", root=str(tmp_path / "nowhere")))
    make_image_folders(tmp_path / "d")
    for child in (tmp_path / "d" / "val").iterdir():
        for f in child.iterdir():
            f.unlink()
        child.rmdir()
    (tmp_path / "d" / "val").rmdir()
    with pytest.raises(FileNotFoundError, match=r"no evaluation split in .*d: looked for .*d/val, .*d/validation, "
                                                r".*d/test"):
        build_datasets(DataConfig(dataset="imagenet", root=str(tmp_path / "d")))
    make_tiny_imagenet(tmp_path / "t")
    (tmp_path / "t" / "tiny-imagenet-200" / "val" / "val_annotations.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"val_annotations.txt does not exist"):
        build_datasets(tiny(tmp_path / "t"))


def test_empty_class_folder(tmp_path):
    make_image_folders(tmp_path)
    (tmp_path / "train" / "emu").mkdir()
    (tmp_path / "train" / "emu" / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match=r"class folder .*train/emu holds no images"):
        build_datasets(DataConfig(dataset="imagefolder", root=str(tmp_path)))


def test_class_mismatch_between_train_and_val(tmp_path):
    make_image_folders(tmp_path)
    (tmp_path / "val" / "dog").rename(tmp_path / "val" / "wolf")
    with pytest.raises(ValueError) as err:
        build_datasets(DataConfig(dataset="imagefolder", root=str(tmp_path)))
    assert "class folders of" in str(err.value) and "val do not match the training classes" in str(err.value)
    assert "no folder for dog" in str(err.value) and "unknown class folders wolf" in str(err.value)


def test_tiny_imagenet_annotation_and_wnid_errors(tmp_path):
    make_tiny_imagenet(tmp_path)
    folder = tmp_path / "tiny-imagenet-200"
    annotations = folder / "val" / "val_annotations.txt"
    good = annotations.read_text()
    annotations.write_text(good + "val_0.JPEG\tn99999999\t0\t0\t1\t1\n")
    with pytest.raises(ValueError, match=r"line 7: class 'n99999999' of val_0.JPEG is not one of the 3 training"):
        build_datasets(tiny(tmp_path))
    annotations.write_text(good + "val_77.JPEG\tn01000000\t0\t0\t1\t1\n")
    with pytest.raises(FileNotFoundError, match=r"line 7: image .*val_77.JPEG does not exist"):
        build_datasets(tiny(tmp_path))
    annotations.write_text(good)
    (folder / "wnids.txt").write_text("\n".join(WNIDS + ["n04000000"]) + "\n")
    with pytest.raises(ValueError,
                       match=r"train do not match the classes listed in .*wnids.txt .*no folder for n04000000"):
        build_datasets(tiny(tmp_path))


@pytest.mark.parametrize("workers", [0, 1])
def test_unreadable_image_is_named(tmp_path, workers, monkeypatch):
    monkeypatch.setattr(imagefolder, "SCAN_LIMIT", 0)  # as for a split too large to scan: found while reading
    make_tiny_imagenet(tmp_path)
    bad = tmp_path / "tiny-imagenet-200" / "train" / "n02000000" / "images" / "n02000000_1.JPEG"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    train, _, _ = build_datasets(tiny(tmp_path, workers=workers))
    for make_batches in (lambda: train.train_batches(4, views=1, seed=0, device=CPU),
                         lambda: train.eval_batches(4, CPU)):
        with pytest.raises(UnreadableImageError) as err:
            list(make_batches())
        assert str(err.value).startswith(f"cannot read image {bad}: ")
        assert "\n" not in str(err.value)  # one line, without the worker's traceback


def test_unreadable_image_through_the_cli(tmp_path, capsys):
    make_tiny_imagenet(tmp_path)
    bad = tmp_path / "tiny-imagenet-200" / "train" / "n01000000" / "images" / "n01000000_2.JPEG"
    bad.write_bytes(b"")
    assert main(["train-teacher", "--out", str(tmp_path / "run"), "model=resnet8", "data.dataset=tiny_imagenet",
                 f"data.root={tmp_path}", "data.batch_size=4", "data.workers=0", "optim.epochs=1",
                 "device=cpu"]) == 2
    assert f"intrakd train-teacher: error: 1 unreadable image in {tmp_path}: {bad} (" in capsys.readouterr().err


def test_configuration_errors(tmp_path):
    make_image_folders(tmp_path)
    with pytest.raises(ValueError, match="data.in_memory needs the pad_crop augmentation"):
        build_datasets(DataConfig(dataset="imagenet", root=str(tmp_path), workers=0, in_memory=True))
    train, _, _ = build_datasets(DataConfig(dataset="imagenet", root=str(tmp_path), workers=0))
    with pytest.raises(ValueError, match="6 training images is fewer than one batch of 64"):
        train.train_batches(64, views=1, seed=0, device=CPU)
    with pytest.raises(ConfigError, match="data.workers must be >= 0"):
        load_config(TeacherConfig, overrides=["data.workers=-1"])
    with pytest.raises(ConfigError, match="data.image_size must be >= 8, got 4"):
        load_config(TeacherConfig, overrides=["data.image_size=4"])
    with pytest.raises(ConfigError, match="data.augment: 'random' is not one of"):
        load_config(TeacherConfig, overrides=["data.augment=random"])
    with pytest.raises(ValueError, match="unknown dataset 'tiny'; available: .*tiny_imagenet, imagenet, imagefolder"):
        build_datasets(DataConfig(dataset="tiny"))


def test_folder_batches_resume_mid_epoch(tmp_path):
    make_image_folders(tmp_path, per_class=5)
    train, _, _ = build_datasets(DataConfig(dataset="imagefolder", root=str(tmp_path), augment="pad_crop",
                                            image_size=16, workers=0))
    batches = train.train_batches(2, 2, seed=3, device=CPU)
    batches.set_epoch(1)
    full = list(batches)
    batches.set_epoch(1, start=2)
    resumed = list(batches)
    assert len(resumed) == len(full) - 2
    for a, b in zip(full[2:], resumed):
        assert torch.equal(a.labels, b.labels) and all(torch.equal(x, y) for x, y in zip(a.views, b.views))
