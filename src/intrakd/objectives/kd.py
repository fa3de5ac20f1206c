"""Hinton et al.'s knowledge distillation: ``ce_weight * CE + kd_weight * T^2 KL`` (the base terms)."""

from __future__ import annotations

from intrakd.objectives.distiller import Distiller
from intrakd.objectives.registry import register_distiller


@register_distiller("kd")
class KDObjective(Distiller):
    """Hinton et al. (2015): match the teacher's softened class probabilities."""

    recipe = (0.1, 0.9)
