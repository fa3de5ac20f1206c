"""Batched tensor augmentation: random crop with zero padding, horizontal flip, and the strong
augmentation of views that ask for it (RandAugment + Cutout). Views stay uint8: each model normalises
and resizes them to its own input (:mod:`intrakd.models.input`)."""

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
class ViewDraws:
    """The random draws that make one augmented view of each image of a batch: applying them
    (:meth:`Augmentation.apply`) gives the view's pixels, so a view can be stored as its draws and
    made again. Every field is per image (first dimension ``B``), None where nothing is drawn."""

    crop: Tensor | None = None
    """``[B, 2]`` int64: the row and column offsets of the crop in the zero-padded image."""
    flip: Tensor | None = None
    """``[B]`` bool: whether the image is mirrored left-right."""
    strong_seed: Tensor | None = None
    """``[B]`` int64: the seed of the image's RandAugment draws (strongly augmented views)."""
    cutout: Tensor | None = None
    """``[B, 3]`` float32: Cutout's uniform draws (side, centre row, centre column; strong views)."""


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
        seeds, cut = self.draw(images.shape[0], generator, images.device)
        return self.apply(images, seeds, cut)

    @staticmethod
    def draw(batch: int, generator: torch.Generator | None = None,
             device: torch.device | None = None) -> tuple[Tensor, Tensor]:
        """``(seeds [B], cutout draws [B, 3])`` of ``batch`` images, drawn from ``generator`` in the
        order :meth:`__call__` draws them."""
        seeds = torch.randint(0, 2**62, (batch,), device=device, generator=generator)
        return seeds, torch.rand(3, batch, device=device, generator=generator).T

    def apply(self, images: Tensor, seeds: Tensor, cut: Tensor) -> Tensor:
        """RandAugment of every image with the draws of its seed (torchvision draws from the global
        CPU generator, seeded per image here and restored after), then Cutout at the drawn boxes."""
        augmented = []
        with torch.random.fork_rng(devices=[]):
            for image, seed in zip(images, seeds.tolist()):
                torch.random.default_generator.manual_seed(seed)
                magnitude = int(torch.randint(0, MAGNITUDE_BINS, ()))
                augmented.append(_rand_augment(magnitude)(image))
        return cutout(torch.stack(augmented), self.fill, cut)


@functools.lru_cache(maxsize=MAGNITUDE_BINS)
def _rand_augment(magnitude: int) -> v2.RandAugment:
    return v2.RandAugment(RAND_AUGMENT_OPS, magnitude, MAGNITUDE_BINS)


def cutout(images: Tensor, fill: tuple[int, ...], draws: Tensor) -> Tensor:
    """Fill a square of each image with ``fill``: side ``u * CUTOUT_MAX_FRACTION * W``, its corner half
    a side before the centre ``(u_row * H, u_col * W)``, clipped to the image (FixMatch's Cutout);
    ``draws`` holds each image's ``(u, u_row, u_col)``, uniform in [0, 1)."""
    _, c, h, w = images.shape
    u = draws.T
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
    """The standard augmentation of a CIFAR-sized dataset, applied to a whole uint8 batch at once.
    ``mean`` and ``std`` are the dataset's statistics: Cutout fills with the mean colour, and a model
    fed the dataset's own normalisation reads them (:meth:`statistics` of a split)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    padding: int = 4
    flip: bool = True

    @property
    def strong(self) -> StrongAugment:
        """The strong augmentation applied after the crop and flip, Cutout filled with the mean colour."""
        return StrongAugment(tuple(round(255 * m) for m in self.mean))

    def draw(self, batch: int, generator: torch.Generator | None = None, strong: bool = False,
             device: torch.device | None = None) -> ViewDraws:
        """The draws of one view of ``batch`` images from ``generator``: crop offsets, flips and, when
        ``strong``, the strong augmentation's (in this order, the order :meth:`__call__` uses)."""
        crop = (torch.randint(0, 2 * self.padding + 1, (2, batch), device=device, generator=generator).T
                if self.padding else None)
        flip = torch.rand(batch, device=device, generator=generator) < 0.5 if self.flip else None
        seeds, cut = self.strong.draw(batch, generator, device) if strong else (None, None)
        return ViewDraws(crop, flip, seeds, cut)

    def apply(self, images: Tensor, draws: ViewDraws) -> Tensor:
        """The view of uint8 ``images`` that ``draws`` make (uint8)."""
        if draws.crop is not None:
            images = crop_at(images, self.padding, draws.crop)
        if draws.flip is not None:
            images = flip_where(images, draws.flip)
        if draws.strong_seed is not None:
            images = self.strong.apply(images, draws.strong_seed, draws.cutout)
        return images

    def __call__(self, images: Tensor, generator: torch.Generator | None = None, strong: bool = False) -> Tensor:
        """One independently drawn augmented view of every image in ``images`` (uint8 ``[B,C,H,W]``);
        ``strong``: followed by :attr:`strong`."""
        return self.apply(images, self.draw(images.shape[0], generator, strong, images.device))


def crop_at(images: Tensor, padding: int, offsets: Tensor) -> Tensor:
    """Crop each image of its zero-padded copy at its ``[row, column]`` offset (``offsets``: ``[B, 2]``;
    torchvision's RandomCrop(pad) when the offsets are uniform in ``0..2 * padding``)."""
    b, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (padding, padding, padding, padding))
    rows = (offsets[:, 0][:, None] + torch.arange(h, device=images.device))[:, None, :, None]
    cols = (offsets[:, 1][:, None] + torch.arange(w, device=images.device))[:, None, None, :]
    batch = torch.arange(b, device=images.device)[:, None, None, None]
    channels = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
    return padded[batch, channels, rows, cols]


def flip_where(images: Tensor, flip: Tensor) -> Tensor:
    """Mirror left-right the images where ``flip`` (``[B]`` bool) is set."""
    return torch.where(flip[:, None, None, None], images.flip(-1), images)
