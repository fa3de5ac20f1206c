"""MixUp and CutMix of training batches (``data.mixup``, ``data.cutmix``), with torchvision's transforms.

A batch is mixed once, after augmentation, before any model sees it: the student and the teacher are
fed the same mixed images, and cross-entropy is taken against the mixed class probabilities
(:attr:`Batch.mixed_targets`). Every view of a batch is mixed alike (the same partner, ratio and box).

torchvision's MixUp and CutMix pair each image with the one before it in the batch (batches are
shuffled) and draw their ratio, box and choice from torch's global CPU generator. Each batch's draws
are made under a fork of that generator seeded by ``(seed, epoch, batch, rank)``: they are a function
of the batch's position, so a resumed run mixes every batch as an uninterrupted one, the data-parallel
ranks mix their own shards differently, and the run's global random state is left as it was.

The views stay uint8 (what every model's input expects: :mod:`intrakd.models.input`): a blend is
computed in float and rounded to the nearest pixel value, as timm's ``FastCollateMixup`` does, so
each pixel is within 0.5/255 of the exact blend; CutMix pastes pixels and is exact.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2

from intrakd.data.tensor_data import Batch, Batches, mix_seed

MIX_STREAM = 0x6D6978
"""Folded into the seed of the mixing draws, so they are no copy of a batch's augmentation stream."""


def mixing_transform(mixup: float, cutmix: float, num_classes: int) -> v2.Transform:
    """torchvision's MixUp (Beta(``mixup``, ``mixup``)), CutMix (``cutmix``), or with both > 0 one of the
    two picked with probability 0.5 for each batch (RandomChoice; timm's ``switch_prob`` default)."""
    transforms = ([v2.MixUp(alpha=mixup, num_classes=num_classes)] if mixup > 0 else []) + \
        ([v2.CutMix(alpha=cutmix, num_classes=num_classes)] if cutmix > 0 else [])
    if not transforms:
        raise ValueError("mixing_transform needs mixup > 0 or cutmix > 0")
    return transforms[0] if len(transforms) == 1 else v2.RandomChoice(transforms)


def describe_mixing(mixup: float, cutmix: float) -> str:
    """How batches are mixed, in words (a run's introduction); empty when they are not."""
    parts = [f"{name} alpha {alpha:g}" for name, alpha in (("MixUp", mixup), ("CutMix", cutmix)) if alpha > 0]
    return " or ".join(parts) + (" (one of the two per batch)" if len(parts) == 2 else "")


def mix_batch(batch: Batch, transform: v2.Transform, seed: int) -> Batch:
    """``batch`` with every view mixed by ``transform`` under draws seeded by ``seed``, its
    ``mixed_targets`` the mixed one-hot labels and its ``labels`` the class each image holds most of."""
    views = tuple(tv_tensors.Image(view.float()) for view in batch.views)
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        mixed, targets = transform(views, batch.labels)
    pixels = tuple(view.as_subclass(Tensor).round_().to(torch.uint8) for view in mixed)
    return dataclasses.replace(batch, views=pixels, labels=targets.argmax(1), mixed_targets=targets)


class MixedBatches:
    """The batches of ``batches``, each mixed by :func:`mix_batch` with draws keyed by ``(seed, epoch,
    batch, rank)`` (implements :class:`~intrakd.data.tensor_data.Batches`)."""

    def __init__(self, batches: Batches, mixup: float, cutmix: float, num_classes: int, seed: int,
                 rank: int | None = None) -> None:
        self.batches, self.seed = batches, seed
        self.transform = mixing_transform(mixup, cutmix, num_classes)
        if rank is None:
            grouped = torch.distributed.is_available() and torch.distributed.is_initialized()
            rank = torch.distributed.get_rank() if grouped else 0
        self.rank = rank
        self.epoch = self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.batches.set_epoch(epoch, start)
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[Batch]:
        for i, batch in enumerate(self.batches, start=self.start):
            yield mix_batch(batch, self.transform, mix_seed(self.seed, MIX_STREAM, self.epoch, i, self.rank))

    def epoch_stats(self) -> dict[str, Any]:
        """The wrapped batches' statistics of the epoch (e.g. skipped images), if they keep any."""
        return getattr(self.batches, "epoch_stats", dict)()

    def run_stats(self) -> dict[str, Any]:
        """The wrapped batches' statistics of the run, if they keep any."""
        return getattr(self.batches, "run_stats", dict)()
