"""Objectives: the teacher's (intra-class contrastive) and the students' (distillation methods)."""

# The registry of distillation methods: one line a method, in the order `intrakd methods` lists them.
# isort: off
from intrakd.objectives import kd  # noqa: F401
from intrakd.objectives import dkd  # noqa: F401
from intrakd.objectives import crd  # noqa: F401
from intrakd.objectives import rkd  # noqa: F401
from intrakd.objectives import fitnet  # noqa: F401
from intrakd.objectives import at  # noqa: F401
from intrakd.objectives import sp  # noqa: F401
from intrakd.objectives import pkt  # noqa: F401
from intrakd.objectives import vid  # noqa: F401
from intrakd.objectives import cc  # noqa: F401
from intrakd.objectives import nst  # noqa: F401
from intrakd.objectives import kdsvd  # noqa: F401
from intrakd.objectives import ofd  # noqa: F401
from intrakd.objectives import reviewkd  # noqa: F401
from intrakd.objectives import mlkd  # noqa: F401
from intrakd.objectives import ab  # noqa: F401
from intrakd.objectives import ft  # noqa: F401
from intrakd.objectives import fsp  # noqa: F401
from intrakd.objectives import dist  # noqa: F401
from intrakd.objectives import deit  # noqa: F401
from intrakd.objectives import ctkd  # noqa: F401  (a learned temperature, not a method)
# isort: on
from intrakd.objectives.base import StepResult
from intrakd.objectives.distiller import Distiller, TrainSetInfo
from intrakd.objectives.registry import (
    Difference,
    ReferenceDifferences,
    create_distiller,
    describe_methods,
    differences_table,
    distill_recipe,
    learned_temperature_methods,
    learned_temperature_recipe,
    list_distillers,
    logit_standardized_methods,
    method_settings,
    methods_data,
    methods_for_pair,
    methods_table,
    pair_optim,
    published_top1,
    reference_of,
    register_distiller,
)
from intrakd.objectives.teacher import IntraClassTeacherObjective
from intrakd.objectives.temperature import LearnedTemperature, list_temperatures, register_temperature

__all__ = [
    "Difference", "Distiller", "IntraClassTeacherObjective", "LearnedTemperature", "ReferenceDifferences",
    "StepResult", "TrainSetInfo", "create_distiller", "describe_methods", "differences_table", "distill_recipe",
    "learned_temperature_methods", "learned_temperature_recipe", "list_distillers", "list_temperatures",
    "logit_standardized_methods", "method_settings", "methods_data", "methods_for_pair",
    "methods_table", "pair_optim", "published_top1", "reference_of", "register_distiller", "register_temperature",
]
