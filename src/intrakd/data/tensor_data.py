"""Datasets held as uint8 tensors, and the batch iterator that augments them on their device."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, TypeVar

import torch
from torch import Tensor
from torchvision.transforms.v2.functional import resize

from intrakd.config import ConfigError
from intrakd.data.augment import Augmentation, ViewDraws


@dataclass
class Batch:
    """One training batch: ``views`` independently augmented copies of the same images."""

    views: tuple[Tensor, ...]
    """uint8 ``[B, C, H, W]`` each: every model normalises and resizes them to its own input."""
    labels: Tensor
    """The class of each image; of a mixed image (:attr:`mixed_targets`), the class it holds most of."""
    indices: Tensor | None = None
    """Position of every image in its training split (for per-sample memories), when known."""
    teacher_logits: tuple[Tensor, ...] | None = None
    """The teacher's logits of each view, when they were read from a store of its outputs
    (:mod:`intrakd.data.teacher_store`) instead of computed."""
    mixed_targets: Tensor | None = None
    """float ``[B, num_classes]`` class probabilities of each image when the batch was mixed
    (:mod:`intrakd.data.mixing`: MixUp, CutMix); None: an unmixed batch, whose targets are ``labels``."""

    @property
    def targets(self) -> Tensor:
        """What cross-entropy is taken against: the mixed class probabilities, else the labels."""
        return self.labels if self.mixed_targets is None else self.mixed_targets


class Batches(Protocol):
    """Training batches of one epoch; :meth:`set_epoch` fixes their order and augmentation.

    ``set_epoch(epoch, start)`` with ``start > 0`` (a run resumed mid-epoch) makes the next pass
    yield exactly the batches ``start, start + 1, ...`` an uninterrupted pass over ``epoch`` yields.
    """

    def set_epoch(self, epoch: int, start: int = 0) -> None: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[Batch]: ...


class Split(Protocol):
    """What the trainer needs of a dataset split (tensor-held or decoded from files)."""

    num_classes: int
    labels: Tensor

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of the images the model is fed."""
        ...

    @property
    def statistics(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The dataset's per-channel ``(mean, std)`` of pixels in [0, 1]: the input of a model fed the data's own."""
        ...

    def __len__(self) -> int: ...
    def train_batches(self, batch_size: int, views: int, seed: int, device: torch.device,
                      strong_views: int = 0) -> Batches:
        """Shuffled batches of ``views`` augmented views of each image, the last ``strong_views`` of
        them strongly augmented (:class:`~intrakd.data.augment.StrongAugment`)."""
        ...
    def eval_batches(self, batch_size: int, device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
        """Unaugmented uint8 ``(images, labels)`` batches on ``device``, in dataset order."""
        ...


@dataclass
class TensorDataset:
    """A whole split as one uint8 ``[N, C, H, W]`` tensor and int64 labels (implements :class:`Split`)."""

    images: Tensor
    labels: Tensor
    num_classes: int
    augmentation: Augmentation

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 [N, C, H, W], got {self.images.dtype} {tuple(self.images.shape)}")
        if self.images.shape[0] != self.labels.shape[0]:
            raise ValueError(f"{self.images.shape[0]} images but {self.labels.shape[0]} labels")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    @property
    def statistics(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return self.augmentation.mean, self.augmentation.std

    def to(self, device: torch.device | str) -> TensorDataset:
        return TensorDataset(self.images.to(device), self.labels.to(device), self.num_classes, self.augmentation)

    def subset(self, index: Tensor) -> TensorDataset:
        return TensorDataset(self.images[index], self.labels[index], self.num_classes, self.augmentation)

    def resized(self, size: int) -> TensorDataset:
        """Every image resized (antialiased) to ``size`` x ``size`` once, the crop padding scaled alike."""
        h = self.images.shape[-1]
        if size == h:
            return self
        images = resize(self.images, [size, size], antialias=True)
        padding = max(1, round(self.augmentation.padding * size / h)) if self.augmentation.padding else 0
        return TensorDataset(images.contiguous(), self.labels, self.num_classes,
                             dataclasses.replace(self.augmentation, padding=padding))

    def train_batches(self, batch_size: int, views: int, seed: int, device: torch.device,
                      strong_views: int = 0) -> TensorBatches:
        """Shuffled, augmented training batches, with the whole split moved to ``device`` once."""
        return TensorBatches(self.to(device), batch_size, views, seed, strong_views=strong_views)

    def eval_batches(self, batch_size: int, device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
        """Unaugmented uint8 ``(images, labels)`` batches on ``device``, in dataset order."""
        for start in range(0, len(self), batch_size):
            images = self.images[start : start + batch_size].to(device, non_blocking=True)
            labels = self.labels[start : start + batch_size].to(device, non_blocking=True)
            yield images, labels


def mix_seed(seed: int, *parts: int, prime: int = 1_000_003) -> int:
    """One 63-bit seed from a run's seed and the parts of a key (epoch, batch, ...), each folded in
    as ``seed * prime + part``: the seed of every random stream of the data pipelines."""
    for part in parts:
        seed = (seed * prime + part) % 2**63
    return seed


def check_fills_a_batch(images: int, batch_size: int) -> None:
    """Raise ``ConfigError`` naming the fix when ``images`` training images make no full batch."""
    if images < batch_size:
        raise ConfigError(f"{images} training images is fewer than one batch of {batch_size}: lower data.batch_size")


def check_strong_views(views: int, strong_views: int) -> None:
    """Raise ``ConfigError`` unless ``0 <= strong_views <= views``."""
    if not 0 <= strong_views <= views:
        raise ConfigError(f"strong_views={strong_views} must lie in 0..{views} (the number of views)")


def split_per_class(labels: Tensor, num_classes: int, last: int) -> tuple[Tensor, Tensor]:
    """Indices (first, rest) where ``rest`` holds the last ``last`` samples of every class."""
    held = torch.zeros(labels.shape[0], dtype=torch.bool)
    for c in range(num_classes):
        members = (labels == c).nonzero().squeeze(1)
        if members.numel() <= last:
            raise ConfigError(f"class {c} has {members.numel()} samples: cannot hold out {last} of them")
        held[members[-last:]] = True
    return (~held).nonzero().squeeze(1), held.nonzero().squeeze(1)


def select_classes(split: S, classes: list[int]) -> S:
    """The images of ``classes`` only (a dataclass split: tensors or files), relabelled ``0..k-1`` in
    the order given."""
    if len(set(classes)) != len(classes):
        raise ConfigError(f"data.classes names a class twice: {classes}")
    bad = [c for c in classes if not 0 <= c < split.num_classes]
    if bad:
        raise ConfigError(f"data.classes: {bad[0]} is not a class index of this dataset (0..{split.num_classes - 1})")
    if len(classes) < 2:
        raise ConfigError("data.classes must name at least 2 classes (with one, cross-entropy is zero)")
    mapping = torch.full((split.num_classes,), -1, dtype=torch.long)
    mapping[torch.tensor(classes)] = torch.arange(len(classes))
    new_labels = mapping[split.labels.cpu()]
    kept = (new_labels >= 0).nonzero().squeeze(1)
    return dataclasses.replace(split.subset(kept), labels=new_labels[kept], num_classes=len(classes))


def first_per_class(labels: Tensor, num_classes: int, count: int) -> Tensor:
    """Indices of the first ``count`` samples of every class (a reduced training set)."""
    return torch.cat([(labels == c).nonzero().squeeze(1)[:count] for c in range(num_classes)]).sort().values


S = TypeVar("S", bound="Split")


class TensorBatches:
    """Shuffled batches of a :class:`TensorDataset`, augmented on the data's device.

    The order of epoch ``e`` depends only on ``(seed, e)`` and the augmentation of its batch ``i``
    only on ``(seed, e, i)``, so a pass can start at any batch (:meth:`set_epoch`) and yield what an
    uninterrupted pass would from there. Incomplete last batches are dropped (fixed shapes).

    Data-parallel (``world_size > 1``; by default read from ``torch.distributed``): ``batch_size`` is
    the global batch and this rank yields its ``batch_size / world_size`` rows of each; rank 0 augments
    from the single-process stream, every other rank from generators keyed by its rank too.
    """

    def __init__(self, data: TensorDataset, batch_size: int, views: int, seed: int,
                 rank: int | None = None, world_size: int | None = None, strong_views: int = 0) -> None:
        check_fills_a_batch(len(data), batch_size)
        check_strong_views(views, strong_views)
        self.data, self.batch_size, self.views, self.seed = data, batch_size, views, seed
        self.strong_views = strong_views
        self.epoch = self.start = 0
        grouped = torch.distributed.is_available() and torch.distributed.is_initialized()
        if world_size is None:
            world_size = torch.distributed.get_world_size() if grouped else 1
        if rank is None:
            rank = torch.distributed.get_rank() if grouped else 0
        self.rank, self.world_size = rank, world_size
        if batch_size % self.world_size:
            raise ConfigError(f"data.batch_size={batch_size} (the global batch) is not divisible by the "
                             f"{self.world_size} data-parallel processes")

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Iterate epoch ``epoch`` from its batch ``start`` on."""
        if not 0 <= start <= len(self):
            raise ValueError(f"start batch {start} is outside 0..{len(self)}")
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return len(self.data) // self.batch_size

    def _generator(self, *key: int) -> torch.Generator:
        generator = torch.Generator(device=self.data.images.device)
        generator.manual_seed(mix_seed(self.seed, *key))
        return generator

    def epoch_order(self, epoch: int) -> Tensor:
        """The permutation of the split that epoch ``epoch`` visits (a function of the seed and the epoch)."""
        return torch.randperm(len(self.data), device=self.data.images.device, generator=self._generator(epoch))

    def batch_rows(self, order: Tensor, i: int) -> Tensor:
        """This rank's rows of batch ``i`` of an epoch visiting the split in ``order``."""
        shard = self.batch_size // self.world_size
        begin = i * self.batch_size + self.rank * shard
        return order[begin : begin + shard]

    def batch_draws(self, epoch: int, i: int) -> tuple[ViewDraws, ...]:
        """The augmentation draws of every view of this rank's rows of batch ``i`` of epoch ``epoch``: a
        function of ``(seed, epoch, i, rank)``, the last ``strong_views`` views strongly augmented."""
        generator = self._generator(epoch, i + 1, *((self.rank,) if self.rank > 0 else ()))
        first_strong = self.views - self.strong_views
        return tuple(self.data.augmentation.draw(self.batch_size // self.world_size, generator, v >= first_strong,
                                                 self.data.images.device) for v in range(self.views))

    def make_batch(self, index: Tensor, draws: tuple[ViewDraws, ...]) -> Batch:
        """The batch of the images at ``index`` (positions in the split), one view per draws."""
        images = self.data.images[index]
        return Batch(tuple(self.data.augmentation.apply(images, d) for d in draws), self.data.labels[index], index)

    def __iter__(self) -> Iterator[Batch]:
        order = self.epoch_order(self.epoch)
        for i in range(self.start, len(self)):
            yield self.make_batch(self.batch_rows(order, i), self.batch_draws(self.epoch, i))
