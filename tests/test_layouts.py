"""Data layouts users already have: an eval split called val, validation or test; ImageNet's flat
val/ labelled by LOC_val_solution.csv or by the devkit's ground truth."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.io import savemat
from test_imagefolder import make_image_folders, noise, save

from intrakd.config import DataConfig
from intrakd.data import build_datasets

WNIDS = ("n01440764", "n01443537")


def imagenet(root) -> DataConfig:
    return DataConfig(dataset="imagenet", root=str(root), workers=0, image_size=16)


@pytest.mark.parametrize("name", ["validation", "test"])
def test_the_eval_split_may_be_called_validation_or_test(tmp_path, name):
    make_image_folders(tmp_path, per_class=3)
    (tmp_path / "val").rename(tmp_path / name)
    _, eval_set, split = build_datasets(imagenet(tmp_path))
    assert len(eval_set) == 4 and split == "val"
    assert all(f"/{name}/" in p for p in eval_set.paths)


def flat_imagenet(root, truth: list[int]) -> None:
    """Train folders of two wnids, and a flat val/ of ImageNet's file names."""
    rng = np.random.default_rng(2)
    for wnid in WNIDS:
        for i in range(2):
            save(noise(rng, 20, 20), root / "train" / wnid / f"{wnid}_{i}.JPEG")
    for i in range(len(truth)):
        save(noise(rng, 20, 20), root / "val" / f"ILSVRC2012_val_{i + 1:08d}.JPEG")


def test_flat_imagenet_val_with_the_kaggle_solution_file(tmp_path):
    truth = [1, 0, 1]
    flat_imagenet(tmp_path, truth)
    rows = [f"ILSVRC2012_val_{i + 1:08d},{WNIDS[t]} 1 2 3 4 {WNIDS[t]} 5 6 7 8" for i, t in enumerate(truth)]
    (tmp_path / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "\n".join(reversed(rows)) + "\n")
    _, eval_set, _ = build_datasets(imagenet(tmp_path))
    assert eval_set.labels.tolist() == truth
    assert [p.rsplit("/", 1)[1] for p in eval_set.paths] == [f"ILSVRC2012_val_{i:08d}.JPEG" for i in (1, 2, 3)]


def test_flat_imagenet_val_with_the_devkit(tmp_path):
    truth = [0, 0, 1]
    flat_imagenet(tmp_path, truth)
    data = tmp_path / "ILSVRC2012_devkit_t12" / "data"
    data.mkdir(parents=True)
    # the devkit numbers classes by its own ILSVRC2012_ID, not in wnid order: here 1 is the second wnid
    synsets = np.array([(1, WNIDS[1]), (2, WNIDS[0])], dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O")])
    savemat(str(data / "meta.mat"), {"synsets": synsets})
    ids = {0: 2, 1: 1}
    (data / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{ids[t]}\n" for t in truth))
    _, eval_set, _ = build_datasets(imagenet(tmp_path))
    assert eval_set.labels.tolist() == truth


def test_flat_val_without_labels_says_what_it_looked_for(tmp_path):
    flat_imagenet(tmp_path, [0, 1])
    with pytest.raises(FileNotFoundError, match=r"holds images but no class folders.*LOC_val_solution.csv.*"
                                                r"ILSVRC2012_devkit_t12"):
        build_datasets(imagenet(tmp_path))
