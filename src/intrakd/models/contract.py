"""The one model contract: every classifier returns logits, its pooled embedding and stage features."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn


class ModelOutput(NamedTuple):
    """What every model's ``forward`` returns."""

    logits: Tensor
    """``[B, num_classes]`` class scores."""
    embedding: Tensor
    """``[B, embedding_dim]`` pooled penultimate feature (what the classifier reads)."""
    features: tuple[Tensor, ...]
    """Stage outputs, earliest first (for feature-based distillation)."""


class Classifier(nn.Module):
    """Base class of intrakd's models.

    Subclasses implement :meth:`stages` (the stage feature maps, earliest first), set
    ``embedding_dim`` and ``num_classes``, and hold their linear classifier in the attribute named by
    :attr:`head_name`. Pooling is adaptive, so every model runs at any input size its stages allow.
    """

    num_classes: int
    embedding_dim: int
    head_name: str = "fc"

    def stages(self, x: Tensor) -> list[Tensor]:
        raise NotImplementedError

    def pool(self, last_stage: Tensor) -> Tensor:
        """Global average pooling of the last stage to ``[B, embedding_dim]``."""
        return torch.flatten(nn.functional.adaptive_avg_pool2d(last_stage, 1), 1)

    def forward(self, x: Tensor) -> ModelOutput:
        features = self.stages(x)
        embedding = self.pool(features[-1])
        logits = getattr(self, self.head_name)(embedding)
        return ModelOutput(logits, embedding, tuple(features))
