"""Statistics of a model's soft labels ``softmax(logits / T)``: how much they say beyond the label."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from intrakd.config import ConfigError


def soft_label_samples(logits: Tensor, labels: Tensor, temperature: float) -> dict[str, Tensor]:
    """Per-sample statistics of ``p = softmax(logits / T)`` (float64 tensors of shape ``[N]``).

    * ``entropy``: ``-sum_j p_j log p_j`` in nats;
    * ``off_target_mass``: ``1 - p_y``, the probability the soft label puts on other classes;
    * ``effective_classes``: ``exp(entropy)``, the number of equally likely classes with the same
      entropy (1 for a one-hot label, C for a uniform one).
    """
    if temperature <= 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    log_p = F.log_softmax(logits.double() / temperature, dim=1)
    entropy = -(log_p.exp() * log_p).sum(1)
    target = log_p.gather(1, labels.long().view(-1, 1)).squeeze(1).exp()
    return {"entropy": entropy, "off_target_mass": 1.0 - target, "effective_classes": entropy.exp()}


def soft_label_stats(logits: Tensor, labels: Tensor, temperature: float) -> dict[str, float]:
    """Means over the samples of :func:`soft_label_samples` (keys ``soft_<name>``) and the temperature."""
    samples = soft_label_samples(logits, labels, temperature)
    return {"temperature": float(temperature), **{f"soft_{k}": v.mean().item() for k, v in samples.items()}}


def per_class_mean(values: Tensor, labels: Tensor, classes: list[int]) -> list[float]:
    """Mean of ``values`` over the samples of each class in ``classes`` (NaN for an absent class)."""
    out = []
    for c in classes:
        members = values[labels == c]
        out.append(members.double().mean().item() if members.numel() else float("nan"))
    return out
