"""What each model is fed: the data layer yields uint8 views, and every model turns them into its own
input (:class:`ModelInput`: resized to its side, antialiased, and normalised with its mean and std) on
the batch tensor, on the device, as the first thing its forward pass does."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from intrakd.config import ConfigError


@dataclass(frozen=True)
class ModelInput:
    """The input of one model: uint8 ``[B, C, H, W]`` images -> float32, resized to ``size`` x ``size``
    (bilinear, antialiased; ``None`` or the images' own side: unchanged), then ``(x / 255 - mean) / std``."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    size: int | None = None

    def __call__(self, images: Tensor) -> Tensor:
        x = images.float() / 255.0
        if self.size is not None and tuple(x.shape[-2:]) != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        mean, std = _channel_stats(self.mean, self.std, x.device)
        return (x - mean) / std

    def describe(self) -> str:
        """One line: ``mean (..) std (..) at S px``."""
        def show(values: tuple[float, ...]) -> str:
            return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"
        return f"mean {show(self.mean)} std {show(self.std)} at {self.size} px"

    def to_dict(self) -> dict[str, Any]:
        return {"mean": list(self.mean), "std": list(self.std), "size": self.size}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelInput:
        return cls(tuple(float(v) for v in values["mean"]), tuple(float(v) for v in values["std"]), values.get("size"))


@functools.lru_cache(maxsize=16)
def _channel_stats(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> tuple[Tensor, Tensor]:
    """``mean`` and ``std`` as ``[1, C, 1, 1]`` tensors on ``device``, made once: copying them to a GPU
    for every batch would make the host wait for the GPU each time."""
    return (torch.tensor(mean, device=device).view(1, -1, 1, 1), torch.tensor(std, device=device).view(1, -1, 1, 1))


def resolve_input(model: nn.Module, data: ModelInput, given: dict[str, Any] | None = None,
                  recorded: dict[str, Any] | None = None) -> ModelInput:
    """The input ``model`` is fed: each of ``given``'s set fields (``mean``, ``std``, ``size``; the
    configuration's ``model_input``), else what a checkpoint ``recorded`` it was trained with, else the
    model's own: the statistics its starting weights were trained with where known
    (``model.pretrained_stats``, timm's ``pretrained_cfg``; averaged over the channels for grey images,
    whose first layer timm sums over RGB) with the data's image side, or else the data's own (``data``:
    the dataset's statistics and image side)."""
    own = recorded
    if own is None:
        stats = getattr(model, "pretrained_stats", None)
        if stats is not None and len(data.mean) == 1:  # grey images: timm sums its first layer over RGB
            stats = ((sum(stats[0]) / len(stats[0]),), (sum(stats[1]) / len(stats[1]),))
        if stats is not None and len(stats[0]) == len(data.mean):
            own = {"mean": stats[0], "std": stats[1], "size": data.size}
        else:
            own = data.to_dict()
    given = {k: v for k, v in (given or {}).items() if v is not None}
    chosen = ModelInput.from_dict({**own, **given})
    channels = len(data.mean)
    if len(chosen.mean) != channels or len(chosen.std) != channels:
        raise ConfigError(f"the model input's mean {list(chosen.mean)} and std {list(chosen.std)} must have one value "
                         f"per channel of the data's {channels}-channel images: give {channels} values each")
    return chosen


def feed_with(model: nn.Module, model_input: ModelInput) -> nn.Module:
    """Make ``model`` turn uint8 images into ``model_input`` as its forward pass begins (a float tensor is
    taken to be its input already, e.g. a probe's); returns ``model``. Set again, it replaces the input."""
    model.model_input = model_input
    if getattr(model, "_input_hook", None) is None:
        model._input_hook = model.register_forward_pre_hook(_to_model_input)
    return model


def model_input_of(model: nn.Module) -> ModelInput | None:
    """The input ``model`` was given by :func:`feed_with` (through a compiled or wrapped model too)."""
    for candidate in (model, getattr(model, "_orig_mod", None), getattr(model, "module", None)):
        found = getattr(candidate, "model_input", None)
        if isinstance(found, ModelInput):
            return found
    return None


def _to_model_input(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    images = args[0]
    if not isinstance(images, Tensor) or images.dtype != torch.uint8:
        return None
    return (module.model_input(images), *args[1:])


def input_shape(model: nn.Module, image_shape: Sequence[int]) -> tuple[int, int, int]:
    """``(C, H, W)`` of what ``model`` reads when fed images of ``image_shape``."""
    found = model_input_of(model)
    channels, height, width = image_shape
    if found is None or found.size is None:
        return channels, height, width
    return channels, found.size, found.size
