"""Learned temperatures: modules that the logit methods accept in place of a fixed
``distill.temperature`` (``distill.temperature=<name>``, e.g. ``ctkd``).

A learned temperature is one module in ``intrakd/objectives`` (its settings dataclass, the section
``distill.<name>``, and a :class:`LearnedTemperature` subclass decorated with
:func:`register_temperature`) and its import line in ``objectives/__init__.py``. The distiller that
takes it (``Distiller.takes_learned_temperature``) holds it as a submodule: its parameters are
trained by the student's optimiser and saved in the checkpoint with the objective's state, and its
``set_epoch`` is called before every epoch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from torch import Tensor, nn

from intrakd.config import ConfigError, DistillConfig, LearnedTemperatureSpec, register_learned_temperature


class LearnedTemperature(nn.Module):
    """Base of the learned temperatures: ``forward(student_logits, teacher_logits)`` gives this
    step's temperature as a 0-dim tensor, differentiable with respect to the module's parameters."""

    name = ""
    """Registry name, set by :func:`register_temperature`."""
    settings_class: ClassVar[type]
    """Dataclass of its settings, the section ``distill.<name>`` (fields made with
    :func:`intrakd.config.setting`)."""
    published: ClassVar[dict[tuple[str, str, str], float]] = {}
    """CIFAR-100 top-1 (%) its paper reports, by ``(method, teacher, student)``, for its presets."""

    def __init__(self, settings: Any) -> None:
        super().__init__()
        self.settings = settings

    def set_epoch(self, epoch: int) -> None:
        """Called before every epoch (0-based, as the trainer counts them); a schedule overrides it."""

    def stats(self) -> dict[str, Tensor]:
        """Values to log every step besides the temperature itself (none by default)."""
        return {}


_TEMPERATURES: dict[str, type[LearnedTemperature]] = {}


def register_temperature(name: str) -> Callable[[type[LearnedTemperature]], type[LearnedTemperature]]:
    """Class decorator: register a learned temperature under ``name``, with its ``settings_class``
    (the section ``distill.<name>``) in the configuration schema."""

    def add(cls: type[LearnedTemperature]) -> type[LearnedTemperature]:
        register_learned_temperature(LearnedTemperatureSpec(name, cls.settings_class))
        cls.name = name
        _TEMPERATURES[name] = cls
        return cls

    return add


def list_temperatures() -> list[str]:
    """Names of the registered learned temperatures, in registration order."""
    return list(_TEMPERATURES)


def temperature_class(name: str) -> type[LearnedTemperature]:
    """The class of learned temperature ``name``."""
    if name not in _TEMPERATURES:
        raise ConfigError(f"unknown learned temperature {name!r}; available: {', '.join(_TEMPERATURES) or 'none'}")
    return _TEMPERATURES[name]


def create_temperature(cfg: DistillConfig) -> LearnedTemperature | None:
    """The learned temperature ``cfg.temperature`` names, with its settings ``cfg.<name>``; None for a
    fixed (numeric) temperature."""
    if not isinstance(cfg.temperature, str):
        return None
    return temperature_class(cfg.temperature)(getattr(cfg, cfg.temperature))
