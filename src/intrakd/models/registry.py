"""Model registry: ``create_model(name, num_classes=...)`` builds any registered model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from intrakd.models.contract import Classifier

_MODELS: dict[str, Callable[..., Classifier]] = {}


def register_model(fn: Callable[..., Classifier]) -> Callable[..., Classifier]:
    """Decorator: register a model constructor under its function name."""
    if fn.__name__ in _MODELS:
        raise ValueError(f"model {fn.__name__!r} registered twice")
    _MODELS[fn.__name__] = fn
    return fn


def register_variant(name: str, make: Callable[..., Classifier], doc: str, num_classes: int = 100) -> None:
    """Register the model ``name``: ``make(num_classes, **kwargs)`` builds it (``num_classes``
    defaulting to the given one); ``doc`` describes it (its first line is what `intrakd models` prints).
    For the members of a family told apart by their arguments (depths, widths, ...)."""

    def build(num_classes: int = num_classes, **kwargs: Any) -> Classifier:
        return make(num_classes, **kwargs)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = doc
    register_model(build)


def list_models() -> list[str]:
    """Names of all registered models."""
    return sorted(_MODELS)


def describe_model(name: str) -> str:
    """The first line of the docstring of model ``name``'s constructor."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    doc = (_MODELS[name].__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""


def create_model(name: str, num_classes: int, **kwargs) -> Classifier:
    """Build the model registered as ``name`` with ``num_classes`` outputs."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    return _MODELS[name](num_classes=num_classes, **kwargs)
