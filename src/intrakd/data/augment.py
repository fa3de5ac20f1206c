"""Batched tensor augmentation: random crop with zero padding, horizontal flip, normalisation, and
the strong augmentation of views that ask for it (RandAugment + Cutout)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.transforms import v2

RAND_AUGMENT_OPS = 2
"""RandAugment operations per strongly augmented image (FixMatch's strong augmentation, as MLKD uses)."""
MAGNITUDE_BINS = 31
"""torchvision's RandAugment magnitude bins; each image draws its magnitude uniformly from them."""
CUTOUT_MAX_FRACTION = 0.5
"""Cutout: the side of the square is drawn uniformly in [0, this] times the image side."""


@dataclass(frozen=True)
class StrongAugment:
    """FixMatch-style strong augmentation of uint8 images (``[B, C, H, W]`` or one ``[C, H, W]``):
    torchvision's RandAugment (two random operations, the magnitude drawn per image), then Cutout of
    a random square filled with ``fill`` (the data's mean colour). Draws come from ``generator``
    (or the global generator when None), so a batch is a function of its generator's state."""

    fill: tuple[int, ...]

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if images.dim() == 3:
            return self(images[None], generator)[0]
        seeds = torch.randint(0, 2**62, (images.shape[0],), device=images.device, generator=generator).tolist()
        augmented = []
        with torch.random.fork_rng(devices=[]):  # torchvision draws from the global CPU generator
            for image, seed in zip(images, seeds):
                torch.random.default_generator.manual_seed(seed)
                magnitude = int(torch.randint(0, MAGNITUDE_BINS, ()))
                augmented.append(_rand_augment(magnitude)(image))
        return cutout(torch.stack(augmented), self.fill, generator)


@functools.lru_cache(maxsize=MAGNITUDE_BINS)
def _rand_augment(magnitude: int) -> v2.RandAugment:
    return v2.RandAugment(RAND_AUGMENT_OPS, magnitude, MAGNITUDE_BINS)


def cutout(images: Tensor, fill: tuple[int, ...], generator: torch.Generator | None = None) -> Tensor:
    """Fill a square of each image with ``fill``: side ``u * CUTOUT_MAX_FRACTION * W`` (``u`` uniform),
    its corner half a side before a uniformly drawn centre, clipped to the image (FixMatch's Cutout)."""
    b, c, h, w = images.shape
    u = torch.rand(3, b, device=images.device, generator=generator)
    side = u[0] * CUTOUT_MAX_FRACTION * w
    top = (u[1] * h - side / 2).clamp(min=0)
    left = (u[2] * w - side / 2).clamp(min=0)
    rows = torch.arange(h, device=images.device)
    cols = torch.arange(w, device=images.device)
    in_rows = (rows >= top[:, None]) & (rows < top[:, None] + side[:, None])
    in_cols = (cols >= left[:, None]) & (cols < left[:, None] + side[:, None])
    inside = in_rows[:, None, :, None] & in_cols[:, None, None, :]
    colour = torch.tensor(fill, dtype=images.dtype, device=images.device).view(1, c, 1, 1)
    return torch.where(inside, colour, images)


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

    @property
    def strong(self) -> StrongAugment:
        """The strong augmentation applied after the crop and flip, Cutout filled with the mean colour."""
        return StrongAugment(tuple(round(255 * m) for m in self.mean))

    def __call__(self, images: Tensor, generator: torch.Generator | None = None, strong: bool = False) -> Tensor:
        """One independently drawn augmented view of every image in ``images`` (uint8 ``[B,C,H,W]``);
        ``strong``: followed by :attr:`strong` before the normalisation."""
        images = random_crop(images, self.padding, generator) if self.padding else images
        if self.flip:
            images = random_flip(images, generator)
        if strong:
            images = self.strong(images, generator)
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
