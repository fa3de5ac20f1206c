"""Evaluation splits as users already have them: a class-folder tree called ``val``, ``validation`` or
``test``, or ImageNet's validation images as distributed (one flat folder) labelled by the devkit's
ground-truth file or by the widely used ``LOC_val_solution.csv``."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from intrakd.config import ConfigError

EVAL_SPLIT_NAMES = ("val", "validation", "test")
"""Folder names tried, in order, for the evaluation split of an image-folder dataset."""
LOC_SOLUTION = "LOC_val_solution.csv"
DEVKIT = "ILSVRC2012_devkit_t12"


def find_eval_folder(root: Path) -> Path:
    """The first of ``root/val``, ``root/validation``, ``root/test`` that exists."""
    for name in EVAL_SPLIT_NAMES:
        if (root / name).is_dir():
            return root / name
    looked = ", ".join(str(root / name) for name in EVAL_SPLIT_NAMES)
    raise FileNotFoundError(f"no evaluation split in {root}: looked for {looked} (each with <class>/<images>, "
                            f"or ImageNet's flat val/ with {LOC_SOLUTION} or the {DEVKIT} ground truth)")


def is_flat(folder: Path, extensions: tuple[str, ...]) -> bool:
    """Whether ``folder`` holds image files directly and no class folders."""
    entries = list(os.scandir(folder))
    return (not any(e.is_dir() and not e.name.startswith(".") for e in entries)
            and any(e.is_file() and e.name.lower().endswith(extensions) for e in entries))


def flat_val_labels(folder: Path, root: Path, classes: list[str],
                    extensions: tuple[str, ...]) -> tuple[list[str], list[int]]:
    """``(paths, labels)`` of ImageNet's flat validation folder, labelled by ``LOC_val_solution.csv``
    (in the dataset folder, its parent or the val folder) or the devkit's ground truth
    (``ILSVRC2012_devkit_t12/data/`` beside ``val``, with its ``meta.mat``)."""
    files = sorted(e.name for e in os.scandir(folder) if e.is_file() and e.name.lower().endswith(extensions))
    index = {wnid: i for i, wnid in enumerate(classes)}
    for place in (root, root.parent, folder):
        if (place / LOC_SOLUTION).is_file():
            wnids = _loc_solution(place / LOC_SOLUTION)
            break
    else:
        devkit = next((p / DEVKIT for p in (root, folder.parent) if (p / DEVKIT).is_dir()), None)
        if devkit is None:
            raise FileNotFoundError(
                f"{folder} holds images but no class folders, and no labels were found for them: expected "
                f"{LOC_SOLUTION} in {root} or {root.parent}, or the devkit folder {root / DEVKIT} "
                "(data/ILSVRC2012_validation_ground_truth.txt and data/meta.mat)")
        wnids = _devkit_ground_truth(devkit, files)
    paths, labels = [], []
    for name in files:
        stem = Path(name).stem
        if stem not in wnids:
            raise ConfigError(f"{folder / name} has no label in the ground truth")
        if wnids[stem] not in index:
            raise ConfigError(f"{folder / name} is labelled {wnids[stem]!r}, not one of the {len(classes)} "
                             "training classes")
        paths.append(str(folder / name))
        labels.append(index[wnids[stem]])
    return paths, labels


def _loc_solution(path: Path) -> dict[str, str]:
    """``{image id: wnid}`` of Kaggle's ``LOC_val_solution.csv`` (ImageId, PredictionString whose
    first word is the wnid)."""
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows or [c.strip() for c in rows[0][:2]] != ["ImageId", "PredictionString"]:
        raise ConfigError(f"{path}: expected the header 'ImageId,PredictionString'")
    labels = {}
    for number, row in enumerate(rows[1:], start=2):
        if len(row) < 2 or not row[1].split():
            raise ConfigError(f"{path} line {number}: expected '<image id>,<wnid> <box> ...', got {','.join(row)!r}")
        labels[row[0].strip()] = row[1].split()[0]
    return labels


def _devkit_ground_truth(devkit: Path, files: list[str]) -> dict[str, str]:
    """``{image id: wnid}`` from the devkit: the ground truth lists an ILSVRC2012_ID per validation
    image in file-name order; ``meta.mat`` maps the IDs to wnids."""
    truth = devkit / "data" / "ILSVRC2012_validation_ground_truth.txt"
    meta = devkit / "data" / "meta.mat"
    for needed in (truth, meta):
        if not needed.is_file():
            raise FileNotFoundError(f"{needed} does not exist: the devkit labels ImageNet's flat val/ with it")
    from scipy.io import loadmat

    synsets = loadmat(str(meta), squeeze_me=True)["synsets"]
    wnid_of = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets}
    ids = [int(line) for line in truth.read_text().split()]
    if len(ids) != len(files):
        raise ConfigError(f"{truth} lists {len(ids)} labels for the {len(files)} images of the val folder")
    return {Path(name).stem: wnid_of[i] for name, i in zip(files, ids)}
