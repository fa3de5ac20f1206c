"""Registry of distillation methods (student objectives); the trainer never names one.

Adding a method is one module in ``intrakd/objectives`` (its settings dataclass, recipe and
:class:`~intrakd.objectives.distiller.Distiller` subclass decorated with :func:`register_distiller`)
and its import line in ``objectives/__init__.py``; registering also adds its settings section to the
configuration schema.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from torch import nn

from intrakd.config import DistillConfig, DistillMethodSpec, register_distill_method, to_dict
from intrakd.data.tensor_data import Split
from intrakd.objectives.distiller import Distiller, TrainSetInfo

_DISTILLERS: dict[str, type[Distiller]] = {}


def register_distiller(name: str) -> Callable[[type[Distiller]], type[Distiller]]:
    """Class decorator: register a student objective under ``name``, with its ``settings_class``
    (the section ``distill.<name>``) and ``recipe`` in the configuration schema."""

    def add(cls: type[Distiller]) -> type[Distiller]:
        if name in _DISTILLERS:
            raise ValueError(f"distiller {name!r} registered twice")
        register_distill_method(DistillMethodSpec(name, cls.settings_class, cls.recipe))
        cls.method = name
        _DISTILLERS[name] = cls
        return cls

    return add


def list_distillers() -> list[str]:
    """Names of the registered methods."""
    return sorted(_DISTILLERS)


def create_distiller(cfg: DistillConfig, student: nn.Module, teacher: nn.Module,
                     train_set: Split | TrainSetInfo) -> Distiller:
    """Build the student objective ``cfg.method`` for these models and training split (its
    auxiliary modules are sized from one dummy forward pass of each model)."""
    _check(cfg.method)
    info = train_set if isinstance(train_set, TrainSetInfo) else TrainSetInfo.from_split(train_set)
    return _DISTILLERS[cfg.method](cfg, student, teacher, info)


def method_settings(name: str) -> dict[str, Any]:
    """The standard settings of method ``name``: its section of :class:`DistillConfig` (empty for KD)."""
    _check(name)
    settings = _DISTILLERS[name].settings_class
    return to_dict(settings()) if settings is not None else {}


def distill_recipe(name: str, teacher_model: str | None = None,
                   student_model: str | None = None) -> dict[str, Any]:
    """The ``distill`` section of method ``name``'s standard recipe, with the settings that the
    reference recipe tunes per teacher/student pair (e.g. DKD's ``nckd_weight``) filled in."""
    _check(name)
    ce, kd = _DISTILLERS[name].recipe
    recipe: dict[str, Any] = {"method": name, "ce_weight": ce, "kd_weight": kd,
                              "temperature": DistillConfig.temperature}
    settings = method_settings(name)
    if teacher_model is not None and student_model is not None:
        settings.update(_DISTILLERS[name].pair_settings(teacher_model, student_model))
    if settings:
        recipe[name] = settings
    return recipe


def describe_methods() -> str:
    """A human-readable list of every method with its recipe weights and settings (``intrakd methods``)."""
    lines = []
    for name, cls in _DISTILLERS.items():
        ce, kd = cls.recipe
        lines.append(f"{name}: {(cls.__doc__ or '').strip().splitlines()[0]}")
        lines.append(f"    distill.method={name}  (recipe: distill.ce_weight={ce} distill.kd_weight={kd})")
        if cls.settings_class is not None:
            for f in dataclasses.fields(cls.settings_class):
                lines.append(f"    distill.{name}.{f.name}={f.default}  {f.metadata.get('help', '')}".rstrip())
        lines.append("")
    lines.append("Every method takes distill.ce_weight, distill.kd_weight (> 0 adds Hinton's KD term) and "
                 f"distill.temperature (default {DistillConfig.temperature}).")
    return "\n".join(lines)


def _check(name: str) -> None:
    if name not in _DISTILLERS:
        raise ValueError(f"unknown distillation method {name!r}; available: {', '.join(list_distillers())}")
