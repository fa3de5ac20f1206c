"""Hinton et al.'s knowledge distillation: ``ce_weight * CE + kd_weight * T^2 KL`` (the base terms)."""

from __future__ import annotations

from typing import Any

from intrakd.objectives.distiller import LOGIT_STANDARDIZED_WEIGHT, Distiller
from intrakd.objectives.registry import register_distiller


@register_distiller("kd")
class KDObjective(Distiller):
    """Hinton et al. (2015): match the teacher's softened class probabilities."""

    kind = "logits"
    recipe = (0.1, 0.9)
    takes_learned_temperature = True

    @classmethod
    def logit_standardized_weights(cls, recipe: dict[str, Any]) -> dict[str, Any]:
        return {"kd_weight": LOGIT_STANDARDIZED_WEIGHT}
