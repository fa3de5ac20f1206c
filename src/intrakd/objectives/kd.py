"""Hinton et al.'s knowledge distillation: ``ce_weight * CE + kd_weight * T^2 KL`` (the base terms)."""

from __future__ import annotations

from typing import Any, ClassVar

from intrakd.objectives.distiller import Distiller
from intrakd.objectives.registry import (
    Difference,
    ReferenceDifferences,
    register_distiller,
)

REFERENCE = ReferenceDifferences(
    "mdistiller: mdistiller/distillers/KD.py; LS repository (sunshangquan/logit-standardization-KD): "
    "distillers/KD.py",
    (
        Difference(
            "logit-standardised presets of resnet32x4 -> ShuffleV1 and wrn_40_2 -> ShuffleV1 use temperature 2,"
            " weight 9",
            "the LS repository publishes no run of these pairs; 2 and 9 are its README's command (the other "
            "pairs take their published run's values; CE weight 0.1 as its code since commit 3ec213f)",
            "an untuned LS recipe for these two pairs"),
    ))
"""The reference code this method follows, and its deliberate differences from it."""


@register_distiller("kd", REFERENCE)
class KDObjective(Distiller):
    """Hinton et al. (2015): match the teacher's softened class probabilities."""

    kind = "logits"
    teacher_in_graph = False
    recipe = (0.1, 0.9)
    takes_learned_temperature = True

    # the LS repository's logs/KD/kd,<teacher>,<student>,<T>,<weight>.txt
    logit_standardized_runs: ClassVar[dict[tuple[str, str], tuple[float, float]]] = {
        ("resnet32x4", "resnet8x4"): (2.0, 9.0), ("vgg13", "vgg8"): (3.0, 9.0), ("wrn_40_2", "wrn_40_1"): (2.0, 9.0),
        ("wrn_40_2", "wrn_16_2"): (2.0, 9.0), ("resnet56", "resnet20"): (2.0, 9.0),
        ("resnet110", "resnet32"): (2.0, 9.0), ("resnet32x4", "ShuffleV2"): (2.0, 9.0),
        ("vgg13", "MobileNetV2"): (3.0, 9.0), ("ResNet50", "MobileNetV2"): (3.0, 1.0),
    }

    # the LS repository's README table (KD+Ours)
    logit_standardized_published: ClassVar[dict[tuple[str, str], float]] = {
        ("resnet32x4", "resnet8x4"): 76.62, ("vgg13", "vgg8"): 74.36, ("wrn_40_2", "wrn_40_1"): 74.37,
        ("wrn_40_2", "wrn_16_2"): 76.11, ("resnet56", "resnet20"): 71.43, ("resnet110", "resnet32"): 74.17,
        ("resnet32x4", "ShuffleV2"): 75.56, ("vgg13", "MobileNetV2"): 68.61, ("ResNet50", "MobileNetV2"): 69.02,
    }

    @classmethod
    def logit_standardized_weights(cls, recipe: dict[str, Any], weight: float) -> dict[str, Any]:
        return {"kd_weight": weight}
