"""Objectives: the teacher's (intra-class contrastive) and the students' (distillation methods)."""

from intrakd.objectives import kd  # noqa: F401  (fill the registry)
from intrakd.objectives.base import StepResult
from intrakd.objectives.registry import create_distiller, list_distillers, register_distiller
from intrakd.objectives.teacher import IntraClassTeacherObjective

__all__ = ["IntraClassTeacherObjective", "StepResult", "create_distiller", "list_distillers", "register_distiller"]
