"""Objectives: the teacher's (intra-class contrastive) and the students' (distillation methods)."""

from intrakd.objectives import at, crd, dkd, fitnet, kd, pkt, rkd, sp  # noqa: F401  (fill the registry)
from intrakd.objectives.base import StepResult
from intrakd.objectives.distiller import Distiller, TrainSetInfo
from intrakd.objectives.registry import (
    create_distiller,
    describe_methods,
    distill_recipe,
    list_distillers,
    method_settings,
    register_distiller,
)
from intrakd.objectives.teacher import IntraClassTeacherObjective

__all__ = [
    "Distiller", "IntraClassTeacherObjective", "StepResult", "TrainSetInfo", "create_distiller",
    "describe_methods", "distill_recipe", "list_distillers", "method_settings", "register_distiller",
]
