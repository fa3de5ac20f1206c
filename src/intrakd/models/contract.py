"""The one model contract: every classifier returns logits, its pooled embedding and stage features."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from intrakd.config import ConfigError
from intrakd.models.input import model_input_of


class ModelOutput(NamedTuple):
    """What every model's ``forward`` returns."""

    logits: Tensor
    """``[B, num_classes]`` class scores."""
    embedding: Tensor
    """``[B, embedding_dim]`` pooled penultimate feature (what the classifier reads)."""
    features: tuple[Tensor, ...]
    """Stage outputs, earliest first, what the feature-based methods read. The last one is the last
    stage's own output: layers that only feed the pooling (a final BN-ReLU, a 1x1 head convolution)
    belong to the embedding, as in the reference models' ``feat`` lists."""
    heads: tuple[Tensor, ...] = ()
    """The ``[B, num_classes]`` scores of each classifier head of a model with two (a ViT with a
    distillation token, DeiT: the class token's head, then the distillation token's), whose mean is
    :attr:`logits`; empty for a model with one head."""


def global_pool(feature_map: Tensor) -> Tensor:
    """Global average pooling of a ``[B, C, H, W]`` map to ``[B, C]``."""
    return torch.flatten(nn.functional.adaptive_avg_pool2d(feature_map, 1), 1)


class Classifier(nn.Module):
    """Base class of intrakd's models.

    Subclasses implement :meth:`stages` (the stage feature maps, earliest first), set
    ``embedding_dim`` and ``num_classes``, and hold their linear classifier in the attribute named by
    :attr:`head_name`; one with layers between its last stage and the pooling overrides :meth:`embed`.
    Pooling is adaptive, so every model runs at any input size its stages allow.
    A wrapper of another library's model may override :meth:`forward` instead (``timm_models``).
    """

    num_classes: int
    embedding_dim: int
    head_name: str = "fc"
    pretrained_stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    """The ``(mean, std)`` its starting weights were trained with, where known (timm's ``pretrained_cfg``):
    the normalisation it is fed by default (:func:`~intrakd.models.input.resolve_input`)."""

    def stages(self, x: Tensor) -> list[Tensor]:
        raise NotImplementedError

    def prepare_for_weights(self, state_dict: dict[str, Tensor]) -> None:
        """Add to the model the parts that ``state_dict`` holds and that its architecture takes on
        request (a timm ViT's distillation token, which ``distill.method=deit`` adds), so that the
        weights load; models without such parts do nothing."""

    def embed(self, last_stage: Tensor) -> Tensor:
        """The ``[B, embedding_dim]`` embedding the head reads, from the last stage feature: its global
        average pooling (a model with layers between its last stage and the pooling applies them first)."""
        return global_pool(last_stage)

    def forward(self, x: Tensor) -> ModelOutput:
        features = self.stages(x)
        embedding = self.embed(features[-1])
        logits = getattr(self, self.head_name)(embedding)
        return ModelOutput(logits, embedding, tuple(features))


@torch.no_grad()
def probe(model: nn.Module, image_shape: Sequence[int]) -> ModelOutput:
    """The outputs of ``model`` for one zero image of ``image_shape`` ``(C, H, W)``, in eval mode
    and without gradients (its training mode is restored): the shapes that auxiliary modules are
    built from, and the test that the model reads such images. A model given its input
    (:func:`~intrakd.models.input.feed_with`) is fed a uint8 image, which it resizes to its own size."""
    was_training = model.training
    param = next(model.parameters())
    dtype = torch.uint8 if model_input_of(model) is not None else param.dtype
    model.eval()
    try:
        return model(torch.zeros(1, *image_shape, device=param.device, dtype=dtype))
    finally:
        model.train(was_training)


def check_reads_images(model: nn.Module, image_shape: Sequence[int], described: str, fix: str) -> None:
    """Raise ``ConfigError`` when ``model`` cannot read images of ``image_shape`` ``(C, H, W)`` (another
    number of channels, or too small for its stages); the message names the model as ``described``
    and ends with ``fix``. A zero image goes through :func:`probe`; the model's state is unchanged."""
    try:
        probe(model, image_shape)
    except RuntimeError as err:
        reason = str(err).strip().splitlines()[0]
        channels, *size = image_shape
        raise ConfigError(
            f"{described} cannot read this dataset's {channels}-channel {'x'.join(map(str, size))} images "
            f"({reason}): {fix}"
        ) from None


def stage_channels(model: nn.Module, image_shape: Sequence[int]) -> tuple[int, ...]:
    """The channel counts of ``model``'s stage features for images of ``image_shape`` ``(C, H, W)``."""
    return tuple(feature.shape[1] for feature in probe(model, image_shape).features)
