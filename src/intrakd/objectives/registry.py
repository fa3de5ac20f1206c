"""Registry of distillation methods (student objectives); the trainer never names one."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

_DISTILLERS: dict[str, type[nn.Module]] = {}


def register_distiller(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: register a student objective under ``name``."""

    def add(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _DISTILLERS:
            raise ValueError(f"distiller {name!r} registered twice")
        _DISTILLERS[name] = cls
        return cls

    return add


def list_distillers() -> list[str]:
    return sorted(_DISTILLERS)


def create_distiller(name: str, cfg, num_classes: int, student: nn.Module, teacher: nn.Module) -> nn.Module:
    """Build the student objective registered as ``name``."""
    if name not in _DISTILLERS:
        raise ValueError(f"unknown distillation method {name!r}; available: {', '.join(list_distillers())}")
    return _DISTILLERS[name](cfg, num_classes, student, teacher)
