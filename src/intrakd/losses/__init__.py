"""Losses of the method: intra-class contrastive loss, margin gate, feature cache, distillation."""

from intrakd.losses.cache import FeatureCache
from intrakd.losses.intra import (
    Memory,
    classification_margin,
    intra_class_contrastive_loss,
    intra_class_terms,
)
from intrakd.losses.kd import kd_loss, standardize_logits

__all__ = [
    "FeatureCache",
    "Memory",
    "classification_margin",
    "intra_class_contrastive_loss",
    "intra_class_terms",
    "kd_loss",
    "standardize_logits",
]
