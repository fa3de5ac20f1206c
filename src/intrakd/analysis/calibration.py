"""Calibration: expected calibration error and the reliability diagram's bins."""

from __future__ import annotations

import torch
from torch import Tensor

from intrakd.config import ConfigError


def reliability_bins(logits: Tensor, labels: Tensor, bins: int = 15) -> dict[str, list[float]]:
    """Equal-width confidence bins over (0, 1]: per bin the sample count, mean confidence, accuracy.

    Confidence is the top softmax probability (T = 1); a sample with confidence ``c`` falls in bin
    ``ceil(c * bins) - 1``. Empty bins have NaN confidence and accuracy.
    """
    if bins < 1:
        raise ConfigError(f"bins must be >= 1, got {bins}")
    probs = torch.softmax(logits.double(), dim=1)
    confidence, predicted = probs.max(1)
    correct = (predicted == labels.to(predicted.device)).double()
    index = (torch.ceil(confidence * bins).long() - 1).clamp(0, bins - 1)
    count = torch.bincount(index, minlength=bins).double()
    conf_sum = torch.bincount(index, weights=confidence, minlength=bins)
    acc_sum = torch.bincount(index, weights=correct, minlength=bins)
    nan = torch.full_like(count, float("nan"))
    return {
        "lower": [i / bins for i in range(bins)],
        "upper": [(i + 1) / bins for i in range(bins)],
        "count": count.tolist(),
        "confidence": torch.where(count > 0, conf_sum / count.clamp_min(1), nan).tolist(),
        "accuracy": torch.where(count > 0, acc_sum / count.clamp_min(1), nan).tolist(),
    }


def expected_calibration_error(logits: Tensor, labels: Tensor, bins: int = 15) -> float:
    """ECE in [0, 1]: ``sum_b (n_b / N) |accuracy_b - confidence_b|`` over equal-width bins."""
    table = reliability_bins(logits, labels, bins)
    total = sum(table["count"])
    if total == 0:
        return 0.0
    return sum(n / total * abs(a - c) for n, a, c in zip(table["count"], table["accuracy"], table["confidence"])
               if n > 0)
