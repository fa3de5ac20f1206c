"""Batched tensor augmentation: random crop with zero padding, horizontal flip, normalisation."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Augmentation:
    """The standard augmentation of a CIFAR-sized dataset, applied to a whole uint8 batch at once."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    padding: int = 4
    flip: bool = True

    def normalize(self, images: Tensor) -> Tensor:
        """uint8 ``[B, C, H, W]`` -> float32 normalised."""
        mean, std = _channel_stats(self.mean, self.std, images.device)
        return (images.float() / 255.0 - mean) / std

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One independently drawn augmented view of every image in ``images`` (uint8 ``[B,C,H,W]``)."""
        images = random_crop(images, self.padding, generator) if self.padding else images
        if self.flip:
            images = random_flip(images, generator)
        return self.normalize(images)


@functools.lru_cache(maxsize=16)
def _channel_stats(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> tuple[Tensor, Tensor]:
    """``mean`` and ``std`` as ``[1, C, 1, 1]`` tensors on ``device``, made once: copying them to a GPU
    for every batch would make the host wait for the GPU each time."""
    return (torch.tensor(mean, device=device).view(1, -1, 1, 1), torch.tensor(std, device=device).view(1, -1, 1, 1))


def random_crop(images: Tensor, padding: int, generator: torch.Generator | None = None) -> Tensor:
    """Crop each image at a random offset from its zero-padded copy (torchvision's RandomCrop(pad))."""
    b, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (padding, padding, padding, padding))
    offsets = torch.randint(0, 2 * padding + 1, (2, b), device=images.device, generator=generator)
    rows = (offsets[0][:, None] + torch.arange(h, device=images.device))[:, None, :, None]
    cols = (offsets[1][:, None] + torch.arange(w, device=images.device))[:, None, None, :]
    batch = torch.arange(b, device=images.device)[:, None, None, None]
    channels = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
    return padded[batch, channels, rows, cols]


def random_flip(images: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = torch.rand(images.shape[0], device=images.device, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)
