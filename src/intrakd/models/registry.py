"""Model registry: ``create_model(name, num_classes=...)`` builds any registered model.

Besides the models registered one by one, a *family* owns every name that starts with its prefix
(``timm/<architecture>``): its builder is given the rest of the name.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from intrakd.config import ConfigError
from intrakd.models.contract import Classifier

_MODELS: dict[str, Callable[..., Classifier]] = {}
_OPTIONS: dict[str, frozenset[str]] = {}
"""The keyword options (besides ``num_classes``) each registered model's constructor takes."""


class Family(NamedTuple):
    """Models named ``<prefix><architecture>``, built by another library."""

    build: Callable[..., Classifier]
    """``build(architecture, num_classes, image_shape, **options)``."""
    describe: Callable[[], str]
    """One line for `intrakd models`: what the family holds and how to list it."""


_FAMILIES: dict[str, Family] = {}


def _options_of(fn: Callable[..., Any]) -> frozenset[str]:
    return frozenset(name for name, p in inspect.signature(fn).parameters.items()
                     if name != "num_classes" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def register_model(fn: Callable[..., Classifier]) -> Callable[..., Classifier]:
    """Decorator: register a model constructor under its function name."""
    if fn.__name__ in _MODELS:
        raise ValueError(f"model {fn.__name__!r} registered twice")
    _MODELS[fn.__name__] = fn
    _OPTIONS[fn.__name__] = _options_of(fn)
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
    _OPTIONS[name] = _options_of(make)


def register_family(prefix: str, build: Callable[..., Classifier], describe: Callable[[], str]) -> None:
    """Let ``build`` make every model named ``<prefix><architecture>`` (see :class:`Family`)."""
    if prefix in _FAMILIES:
        raise ValueError(f"model family {prefix!r} registered twice")
    _FAMILIES[prefix] = Family(build, describe)


def list_models() -> list[str]:
    """Names of all registered models (families not included: see :func:`list_families`)."""
    return sorted(_MODELS)


def list_families() -> dict[str, str]:
    """Each family's prefix and its one-line description."""
    return {prefix: family.describe() for prefix, family in sorted(_FAMILIES.items())}


def _unknown(name: str) -> ConfigError:
    families = "".join(f"; or {prefix}<architecture>" for prefix in sorted(_FAMILIES))
    return ConfigError(f"unknown model {name!r}; available: {', '.join(list_models())}{families}")


def describe_model(name: str) -> str:
    """The first line of the docstring of model ``name``'s constructor."""
    if name not in _MODELS:
        raise _unknown(name)
    doc = (_MODELS[name].__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""


def create_model(name: str, num_classes: int, image_shape: Sequence[int] | None = None, **options: Any) -> Classifier:
    """Build the model named ``name`` with ``num_classes`` outputs.

    ``image_shape`` ``(C, H, W)`` describes the images the model will read: a family's models are
    built for them (timm's: their input channels, and the input size of those whose size is fixed when
    built, like ViTs); the registered models read any size their stages allow and ignore it.
    ``options`` go to the model's constructor (``weights=PATH`` for the ``imagenet_*`` and ``timm/``
    models, ``pretrained=True`` for ``timm/``); one it does not take is a ``ConfigError``.
    """
    for prefix, family in _FAMILIES.items():
        if name.startswith(prefix):
            return family.build(name[len(prefix):], num_classes, image_shape, **options)
    if name not in _MODELS:
        raise _unknown(name)
    refused = sorted(options.keys() - _OPTIONS[name])
    if refused:
        raise ConfigError(f"model {name!r} takes no {' or '.join(refused)} (weights=PATH: the imagenet_* and "
                         "timm/ models; pretrained=true: the timm/ models)")
    return _MODELS[name](num_classes=num_classes, **options)
