"""Datasets of image files: Tiny ImageNet in its official layout, ImageNet, any class-folder tree.

Images are decoded and augmented in DataLoader worker processes into uint8 tensors, which each model
normalises on the training device (:mod:`intrakd.models.input`). The augmentation of every image
depends only on ``(seed, epoch, index)``, so a run is reproducible whatever the number of workers. A split whose
images are small can instead be decoded once into a :class:`TensorDataset` (``data.in_memory``).
"""

from __future__ import annotations

import os
import stat
import traceback
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets.folder import make_dataset
from torchvision.transforms import v2

from intrakd.config import ConfigError
from intrakd.data.augment import Augmentation
from intrakd.data.badimages import SCAN_LIMIT, BadImages, SkipLog, marked_index, marker, scan
from intrakd.data.layouts import find_eval_folder, flat_val_labels, is_flat
from intrakd.data.tensor_data import Batch, TensorDataset, check_fills_a_batch, check_strong_views, mix_seed
from intrakd.progress import say

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Tiny ImageNet's statistics as used by the KD benchmark (so its checkpoints evaluate alike)
TINY_IMAGENET_MEAN, TINY_IMAGENET_STD = (0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262)
EVAL_CROP_FRACTION = 0.875
"""Eval images are resized to ``image_size / 0.875`` (256 for 224) and centre-cropped."""

Crop = Literal["pad_crop", "resized_crop"]


class UnreadableImageError(ConfigError):
    """An image file that cannot be decoded (the message names the file)."""


def read_image(path: str | Path) -> Image.Image:
    """Decode ``path`` to an RGB image, or raise :class:`UnreadableImageError` naming the file."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise UnreadableImageError(f"cannot read image {path}: {err}") from None


@dataclass(frozen=True)
class Pipeline:
    """The augmentation of one folder dataset.

    ``pad_crop``: resize to ``image_size`` square, random crop with zero padding ``image_size // 8``,
    flip (CIFAR / Tiny ImageNet style); eval: the resize only. ``resized_crop``: RandomResizedCrop
    ``image_size`` + flip (ImageNet style); eval: resize the shorter side to ``image_size / 0.875``,
    centre crop ``image_size``.
    """

    crop: Crop
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def padding(self) -> int:
        return self.image_size // 8

    @property
    def augmentation(self) -> Augmentation:
        """The dataset's statistics (and, for a tensor-held split, the batched pad-crop + flip)."""
        return Augmentation(self.mean, self.std, padding=self.padding, flip=True)

    def train_transform(self, strong: bool = False) -> v2.Compose:
        """PIL image -> one augmented uint8 ``[3, S, S]`` tensor; ``strong``: followed by the strong
        augmentation (RandAugment + Cutout, :class:`~intrakd.data.augment.StrongAugment`)."""
        size = self.image_size
        if self.crop == "pad_crop":
            steps = [v2.Resize((size, size)), v2.RandomCrop(size, padding=self.padding)]
        else:
            steps = [v2.RandomResizedCrop(size)]
        return v2.Compose([*steps, v2.RandomHorizontalFlip(), v2.PILToTensor(),
                           *([self.augmentation.strong] if strong else [])])

    def eval_transform(self) -> v2.Compose:
        """PIL image -> uint8 ``[3, S, S]`` tensor, deterministic."""
        size = self.image_size
        if self.crop == "pad_crop":
            steps = [v2.Resize((size, size))]
        else:
            steps = [v2.Resize(round(size / EVAL_CROP_FRACTION)), v2.CenterCrop(size)]
        return v2.Compose([*steps, v2.PILToTensor()])


def _augmentation_seed(seed: int, epoch: int, index: int) -> int:
    return mix_seed(mix_seed(seed, epoch), index, prime=1_000_033)


class _Files(Dataset):
    """``(views, label, index)`` per image with ``views`` augmented copies when ``seed`` is given (each
    image's random draws seeded by ``(seed, epoch, index)``), otherwise ``(tensor, label)`` with one
    deterministic tensor."""

    def __init__(self, paths: list[str], labels: list[int], transform: v2.Compose, views: int = 1,
                 seed: int | None = None, epoch: int = 0, skip: frozenset[int] | None = None, size: int = 0,
                 strong_transform: v2.Compose | None = None, strong_views: int = 0) -> None:
        self.paths, self.labels, self.transform = paths, labels, transform
        self.views, self.seed, self.epoch = views, seed, epoch
        self.view_transforms = (transform,) * (views - strong_views) + (strong_transform,) * strong_views
        """One transform per view: the last ``strong_views`` views take ``strong_transform``."""
        self.skip, self.size = skip, size
        """``skip``: None to raise on an unreadable image, else the indices known to be unreadable;
        those and any other that fails to decode come back as blank images with a marker label."""

    def __len__(self) -> int:
        return len(self.paths)

    def _skipped(self, index: int) -> tuple[Tensor, int] | tuple[tuple[Tensor, ...], int, int]:
        blank = torch.zeros(3, self.size, self.size, dtype=torch.uint8)
        return (blank, marker(index)) if self.seed is None else ((blank,) * self.views, marker(index), index)

    def __getitem__(self, index: int) -> tuple[Tensor, int] | tuple[tuple[Tensor, ...], int, int]:
        if self.skip is not None and index in self.skip:
            return self._skipped(index)
        try:
            image = read_image(self.paths[index])
        except UnreadableImageError:
            if self.skip is None:
                raise
            return self._skipped(index)
        if self.seed is None:
            return self.transform(image), self.labels[index]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_augmentation_seed(self.seed, self.epoch, index))
            views = tuple(transform(image) for transform in self.view_transforms)
        return views, self.labels[index], index


def _worker_error(err: UnreadableImageError) -> UnreadableImageError:
    """The one-line message of an error re-raised from a DataLoader worker (which prefixes the
    worker's traceback)."""
    line = str(err).strip().splitlines()[-1]
    prefix = f"{UnreadableImageError.__module__}.{UnreadableImageError.__qualname__}: "
    return UnreadableImageError(line.removeprefix(prefix))


@dataclass
class ImageFolderSplit:
    """A split of image files with integer labels (implements :class:`~intrakd.data.Split`).

    ``workers`` decoding processes are started per pass (never more than the CPUs available).
    """

    paths: list[str]
    labels: Tensor
    num_classes: int
    pipeline: Pipeline
    workers: int = 8
    bad_images: BadImages = "error"
    """What an unreadable image does: stop the run (``error``) or leave it out (``skip``)."""
    bad: dict[int, str] = field(default_factory=dict)
    """Indices of the images known to be unreadable, with the reason (found by :meth:`check_images`
    or while reading)."""
    log: SkipLog = field(default_factory=SkipLog)

    def __len__(self) -> int:
        return len(self.paths)

    def find_unreadable(self, where: str) -> dict[str, str]:
        """Decode every image once (splits of at most :data:`SCAN_LIMIT`; larger ones are not scanned)
        and return ``{path: reason}`` of the unreadable ones; with ``skip`` each is named once here."""
        if len(self) > SCAN_LIMIT:
            return {}
        workers = max(1, min(self.workers, len(os.sched_getaffinity(0))))
        if len(self) >= 2000:
            say(f"checking that the {len(self)} images of {where} can be read ...")
        self.bad.update(scan(self.paths, workers))
        if self.bad_images == "skip":
            for index, reason in sorted(self.bad.items()):
                self.log.skipped(self.paths[index], reason)
        return {self.paths[i]: reason for i, reason in self.bad.items()}

    def _skip(self) -> frozenset[int] | None:
        return frozenset(self.bad) if self.bad_images == "skip" else None

    def _drop_skipped(self, images: Tensor | list[Tensor], labels: Tensor
                      ) -> tuple[Tensor | tuple[Tensor, ...], Tensor]:
        """Leave the marked (unreadable) images out of a batch, naming each once."""
        keep = labels >= 0
        if bool(keep.all()):
            return images, labels
        for label in labels[~keep].tolist():
            index = marked_index(label)
            self.bad.setdefault(index, "unreadable")
            self.log.skipped(self.paths[index], self.bad[index])
        if not bool(keep.any()):
            raise UnreadableImageError(f"every image of a batch is unreadable (e.g. {self.paths[index]})")
        if isinstance(images, (tuple, list)):  # the views of a training batch
            return tuple(v[keep] for v in images), labels[keep]
        return images[keep], labels[keep]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return 3, self.pipeline.image_size, self.pipeline.image_size

    @property
    def statistics(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return self.pipeline.mean, self.pipeline.std

    def subset(self, index: Tensor) -> ImageFolderSplit:
        chosen = index.tolist()
        bad = {j: self.bad[i] for j, i in enumerate(chosen) if i in self.bad}
        return ImageFolderSplit([self.paths[i] for i in chosen], self.labels[index], self.num_classes,
                                self.pipeline, self.workers, self.bad_images, bad, self.log)

    def _loader(self, dataset: _Files, batch_size: int, device: torch.device, order: list[int] | None = None,
                drop_last: bool = False) -> Iterator:
        workers = min(self.workers, len(os.sched_getaffinity(0)))
        loader = DataLoader(dataset, batch_size=batch_size, sampler=order, num_workers=workers,
                            drop_last=drop_last, pin_memory=device.type == "cuda")
        try:
            yield from loader
        except UnreadableImageError as err:
            # the original traceback's frames hold the loader's iterator in a reference cycle: clear
            # them so its worker processes stop now, not whenever the garbage collector runs
            traceback.clear_frames(err.__traceback__)
            raise _worker_error(err) from None

    def train_batches(self, batch_size: int, views: int, seed: int, device: torch.device,
                      strong_views: int = 0) -> FolderBatches:
        """Shuffled batches of ``views`` augmented views (the last ``strong_views`` strongly), decoded
        by ``workers`` processes."""
        return FolderBatches(self, batch_size, views, seed, device, strong_views)

    def eval_batches(self, batch_size: int, device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
        """Eval-transformed uint8 ``(images, labels)`` batches on ``device``, in order."""
        dataset = _Files(self.paths, self.labels.tolist(), self.pipeline.eval_transform(), skip=self._skip(),
                         size=self.pipeline.image_size)
        for images, labels in self._loader(dataset, batch_size, device):
            images, labels = self._drop_skipped(images, labels)
            yield images.to(device, non_blocking=True), labels.to(device, non_blocking=True)

    def to_tensors(self, batch_size: int = 256) -> TensorDataset:
        """Decode the whole split once (eval transform) into a uint8 :class:`TensorDataset` whose
        batched augmentation is the pipeline's pad-crop + flip."""
        if self.pipeline.crop != "pad_crop":
            raise ConfigError("data.in_memory needs the pad_crop augmentation (set data.augment=pad_crop): "
                             "a random resized crop cannot be drawn from a pre-decoded fixed-size tensor")
        if self.bad and self.bad_images == "skip":  # decoded once: the unreadable ones are simply left out
            good = torch.tensor([i for i in range(len(self)) if i not in self.bad], dtype=torch.int64)
            return self.subset(good).to_tensors(batch_size)
        size = self.pipeline.image_size
        images = torch.empty(len(self), 3, size, size, dtype=torch.uint8)
        dataset = _Files(self.paths, self.labels.tolist(), self.pipeline.eval_transform())
        start = 0
        for batch, _ in self._loader(dataset, batch_size, torch.device("cpu")):
            images[start : start + batch.shape[0]] = batch
            start += batch.shape[0]
        return TensorDataset(images, self.labels.clone(), self.num_classes, self.pipeline.augmentation)


class FolderBatches:
    """Training batches of an :class:`ImageFolderSplit`; the order and the augmentation of epoch ``e``
    depend only on ``(seed, e)``. Incomplete last batches are dropped."""

    def __init__(self, split: ImageFolderSplit, batch_size: int, views: int, seed: int, device: torch.device,
                 strong_views: int = 0) -> None:
        check_fills_a_batch(len(split), batch_size)
        check_strong_views(views, strong_views)
        self.split, self.batch_size, self.views, self.seed, self.device = split, batch_size, views, seed, device
        self.strong_views = strong_views
        self.epoch = self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Iterate epoch ``epoch`` from its batch ``start`` on (augmentation is per image, so the
        batches from ``start`` are those of an uninterrupted pass)."""
        if not 0 <= start <= len(self):
            raise ValueError(f"start batch {start} is outside 0..{len(self)}")
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return len(self.split) // self.batch_size

    def epoch_stats(self) -> dict[str, int]:
        """``skipped_images``: unreadable images left out of this epoch's batches (with ``skip``;
        computed from the epoch's order, so a resumed epoch counts alike)."""
        if self.split.bad_images != "skip":
            return {}
        return {"skipped_images": len(self._skipped_in(self.epoch))}

    def run_stats(self) -> dict[str, int]:
        """``skipped_images``: the distinct unreadable training images left out of the batches of the
        epochs so far (with ``skip``): one epoch's run agrees with its ``metrics.jsonl`` line."""
        if self.split.bad_images != "skip":
            return {}
        return {"skipped_images": len(set().union(*(self._skipped_in(e) for e in range(self.epoch + 1))))}

    def _skipped_in(self, epoch: int) -> set[int]:
        """The unreadable images among those epoch ``epoch``'s batches hold (the rest of the order is
        dropped as an incomplete batch)."""
        return self.split.bad.keys() & set(self._order(epoch)[: len(self) * self.batch_size])

    def _order(self, epoch: int | None = None) -> list[int]:
        """The permutation of the split of epoch ``epoch`` (default: the current one; a function of the
        seed and the epoch only)."""
        generator = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch if epoch is None else epoch))
        return torch.randperm(len(self.split), generator=generator).tolist()

    def __iter__(self) -> Iterator[Batch]:
        order = self._order()[self.start * self.batch_size :]
        split, device = self.split, self.device
        dataset = _Files(split.paths, split.labels.tolist(), split.pipeline.train_transform(), self.views,
                         self.seed, self.epoch, split._skip(), split.pipeline.image_size,
                         split.pipeline.train_transform(strong=True), self.strong_views)
        for views, labels, indices in split._loader(dataset, self.batch_size, device, order, drop_last=True):
            kept = labels >= 0  # unreadable images carry a marker label
            views, labels = split._drop_skipped(views, labels)
            indices = indices[kept]
            yield Batch(tuple(v.to(device, non_blocking=True) for v in views),
                        labels.to(device, non_blocking=True), indices.to(device, non_blocking=True))


def _show(names: list[str] | set[str]) -> str:
    names = sorted(names)
    return ", ".join(names[:5]) + (f" ... ({len(names)} in all)" if len(names) > 5 else "")


def scan_class_folders(folder: Path, classes: list[str] | None = None,
                       source: str = "the training classes") -> tuple[list[str], list[str], list[int]]:
    """``(classes, paths, labels)`` of a ``folder/<class>/**/<image>`` tree.

    Classes are the sorted sub-folder names; when ``classes`` is given (``source`` says where they
    come from, for the error) the sub-folders must be exactly those. Every class folder must hold at
    least one image.
    """
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} does not exist: expected a folder with one sub-folder of images per class")
    found = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    if not found:
        raise ConfigError(f"{folder} holds no class folders: expected {folder}/<class>/<image files>")
    if classes is None and len(found) == 1:
        raise ConfigError(f"{folder} holds one class folder ({found[0]}): a classifier needs at least two classes "
                         "(with one, the cross-entropy is zero whatever the model does)")
    if classes is None:
        classes = found
    elif set(found) != set(classes):
        missing, extra = set(classes) - set(found), set(found) - set(classes)
        parts = [f"the class folders of {folder} do not match {source} ({len(found)} vs {len(classes)} classes):"]
        if missing:
            parts.append(f"no folder for {_show(missing)};")
        if extra:
            parts.append(f"unknown class folders {_show(extra)};")
        raise ConfigError(" ".join(parts).rstrip(";"))
    # torchvision's scan (sub-folders included, links followed, extensions case-insensitive), grouped
    # by label in the order of `classes` (it walks the classes in name order)
    samples = sorted(make_dataset(folder, {name: i for i, name in enumerate(classes)}, IMAGE_EXTENSIONS,
                                  allow_empty=True), key=lambda sample: sample[1])
    counts = Counter(label for _, label in samples)
    empty = [name for label, name in enumerate(classes) if not counts[label]]
    if empty:
        raise ConfigError(f"class folder {folder / empty[0]} holds no images (expected files ending in "
                         f"{', '.join(IMAGE_EXTENSIONS)})")
    paths = [path for path, _ in samples]
    special = [path for path in paths if not stat.S_ISREG(os.stat(path).st_mode)]
    if special:  # reading a FIFO would wait for a writer for ever
        raise ConfigError(f"{len(special)} of the image files in {folder} are not regular files (a FIFO, socket or "
                          f"device), e.g. {special[0]}: remove them or replace them with images")
    labels = [label for _, label in samples]
    return classes, paths, labels


def _split(paths: list[str], labels: list[int], num_classes: int, pipeline: Pipeline, workers: int) -> ImageFolderSplit:
    return ImageFolderSplit(paths, torch.tensor(labels, dtype=torch.int64), num_classes, pipeline, workers)


def load_image_folders(root: str | Path, pipeline: Pipeline,
                       workers: int = 8) -> tuple[ImageFolderSplit, ImageFolderSplit]:
    """(train, val) of ``root/train/<class>/*`` and ``root/val/<class>/*`` (ImageNet's usual layout,
    or any such tree; the eval folder may be called ``val``, ``validation`` or ``test``, and may be
    ImageNet's flat ``val/`` labelled by the devkit or ``LOC_val_solution.csv``); the classes are the
    sorted folder names of ``train``."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {root} does not exist: expected {root}/train/<class>/<images> "
                                f"and {root}/val/<class>/<images>")
    classes, paths, labels = scan_class_folders(root / "train")
    eval_folder = find_eval_folder(root)
    if is_flat(eval_folder, IMAGE_EXTENSIONS):  # ImageNet's val as distributed
        val_paths, val_labels = flat_val_labels(eval_folder, root, classes, IMAGE_EXTENSIONS)
    else:
        _, val_paths, val_labels = scan_class_folders(eval_folder, classes)
    return (_split(paths, labels, len(classes), pipeline, workers),
            _split(val_paths, val_labels, len(classes), pipeline, workers))


def resolve_tiny_imagenet_dir(root: str | Path) -> Path:
    """The folder holding ``train``/``val``: ``root`` itself or ``root/tiny-imagenet-200``."""
    root = Path(root).expanduser()
    for candidate in (root, root / "tiny-imagenet-200"):
        if (candidate / "train").is_dir():
            return candidate
    raise FileNotFoundError(
        f"Tiny ImageNet not found at {root}: expected the official layout (train/<wnid>/images/*.JPEG, "
        f"val/images/*.JPEG, val/val_annotations.txt, wnids.txt) in {root} or in {root / 'tiny-imagenet-200'}"
    )


def _tiny_imagenet_val(folder: Path, classes: list[str]) -> tuple[list[str], list[int]]:
    annotations = folder / "val_annotations.txt"
    if not annotations.is_file():
        if folder.is_dir() and any(e.is_dir() and e.name != "images" for e in os.scandir(folder)):
            _, paths, labels = scan_class_folders(folder, classes)  # already sorted into val/<wnid>/
            return paths, labels
        raise FileNotFoundError(f"{annotations} does not exist: expected Tiny ImageNet's val/val_annotations.txt "
                                f"and val/images/ (or val/<wnid>/ class folders)")
    index = {wnid: i for i, wnid in enumerate(classes)}
    paths, labels = [], []
    for number, line in enumerate(annotations.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            raise ConfigError(f"{annotations} line {number}: expected '<file>\\t<wnid>\\t...', got {line!r}")
        name, wnid = fields[0].strip(), fields[1].strip()
        if wnid not in index:
            raise ConfigError(f"{annotations} line {number}: class {wnid!r} of {name} is not one of the "
                             f"{len(classes)} training classes")
        path = folder / "images" / name
        if not path.is_file():
            raise FileNotFoundError(f"{annotations} line {number}: image {path} does not exist")
        paths.append(str(path))
        labels.append(index[wnid])
    if not paths:
        raise ConfigError(f"{annotations} lists no images")
    return paths, labels


def load_tiny_imagenet(root: str | Path, pipeline: Pipeline,
                       workers: int = 8) -> tuple[ImageFolderSplit, ImageFolderSplit]:
    """(train, val) of Tiny ImageNet in its official layout, no reorganisation needed.

    Classes are the sorted wnids (of ``wnids.txt`` when present, else of the train folders): the
    label order of a class-folder loader, so checkpoints trained that way evaluate correctly.
    """
    folder = resolve_tiny_imagenet_dir(root)
    wnids_file = folder / "wnids.txt"
    if wnids_file.is_file():
        wnids = [w.strip() for w in wnids_file.read_text().splitlines() if w.strip()]
        if len(set(wnids)) != len(wnids):
            raise ConfigError(f"{wnids_file} lists a class twice")
        classes = sorted(wnids)
    else:
        classes = None
    classes, paths, labels = scan_class_folders(folder / "train", classes, f"the classes listed in {wnids_file}")
    val_paths, val_labels = _tiny_imagenet_val(folder / "val", classes)
    return (_split(paths, labels, len(classes), pipeline, workers),
            _split(val_paths, val_labels, len(classes), pipeline, workers))
