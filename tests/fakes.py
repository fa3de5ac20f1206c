"""Test doubles shared by several test files."""

from __future__ import annotations

import errno
import io
import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from intrakd.losses import FeatureCache
from intrakd.models import Classifier


class FullDisk:
    """``os.fdopen`` whose files refuse any write beyond ``room`` bytes with ENOSPC."""

    def __init__(self, room: int) -> None:
        self.room, self.written = room, 0

    def __call__(self, fd: int, mode: str = "r", *args, **kwargs) -> io.FileIO:
        disk = self

        class Limited(io.FileIO):
            def write(self, data: bytes) -> int:
                if len(data) > disk.room:
                    disk.room = 0
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                disk.room -= len(data)
                disk.written += len(data)
                return super().write(data)

        return Limited(fd, "wb")


class TinyNet(Classifier):
    """Two convolutions and a linear head on 1 x 8 x 8 images; no batch norm (fast to trace; the same
    in one process and in several)."""

    def __init__(self, num_classes: int = 4, width: int = 8) -> None:
        super().__init__()
        self.num_classes, self.embedding_dim = num_classes, 2 * width
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.fc = nn.Linear(2 * width, num_classes)

    def stages(self, x: Tensor) -> list[Tensor]:
        f1 = F.relu(self.conv1(x))
        return [f1, F.relu(self.conv2(f1))]


def cache_memory(cache: FeatureCache) -> tuple[Tensor, Tensor]:
    """A feature cache's entries flattened to ``[C*K, D]`` and their labels ``[C*K]`` (-1 where a slot
    is unusable): the flat layout of a ``Memory`` record."""
    labels = torch.arange(cache.num_classes, device=cache.features.device)[:, None].expand(-1, cache.capacity)
    return cache.features.reshape(-1, cache.dim), torch.where(cache.valid(), labels, -1).reshape(-1)
