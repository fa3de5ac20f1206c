"""Registry of distillation methods (student objectives); the trainer never names one.

Adding a method is one module in ``intrakd/objectives`` (its settings dataclass, recipe and
:class:`~intrakd.objectives.distiller.Distiller` subclass decorated with :func:`register_distiller`,
which takes the method's :class:`ReferenceDifferences`) and its import line in
``objectives/__init__.py``; registering also adds its settings section to the configuration schema.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from intrakd.config import (
    ConfigError,
    DistillConfig,
    DistillMethodSpec,
    flatten,
    register_distill_method,
    to_dict,
)
from intrakd.data.tensor_data import Split
from intrakd.objectives.distiller import Distiller, TrainSetInfo
from intrakd.objectives.temperature import list_temperatures, temperature_class

_DISTILLERS: dict[str, type[Distiller]] = {}
_REFERENCES: dict[str, ReferenceDifferences] = {}


@dataclass(frozen=True)
class Difference:
    """One deliberate difference of a method from the reference code its presets cite."""

    what: str
    """What intrakd does otherwise than the reference code."""
    why: str
    """Why it does."""
    effect: str
    """The expected effect on the loss or the result."""


@dataclass(frozen=True)
class ReferenceDifferences:
    """The reference code a method follows and every deliberate difference from it (the table
    "Differences from the reference code" of docs/methods.md, ``intrakd methods --markdown``)."""

    reference: str
    """The reference file(s), ``repository: path``."""
    differences: tuple[Difference, ...] = ()
    """Empty: the method computes what the reference code computes."""


def register_distiller(name: str, reference: ReferenceDifferences) -> Callable[[type[Distiller]], type[Distiller]]:
    """Class decorator: register a student objective under ``name``, with its ``settings_class``
    (the section ``distill.<name>``) and ``recipe`` in the configuration schema, and the reference
    code it follows with its deliberate differences from it (``reference``)."""

    def add(cls: type[Distiller]) -> type[Distiller]:
        if name in _DISTILLERS:
            raise ValueError(f"distiller {name!r} registered twice")
        register_distill_method(DistillMethodSpec(name, cls.settings_class, cls.recipe,
                                                  cls.takes_learned_temperature))
        cls.method = name
        _DISTILLERS[name] = cls
        _REFERENCES[name] = reference
        return cls

    return add


def list_distillers() -> list[str]:
    """Names of the registered methods."""
    return sorted(_DISTILLERS)


def distiller_class(name: str) -> type[Distiller]:
    """The class registered as method ``name`` (its views, kind and recipe, before building it)."""
    _check(name)
    return _DISTILLERS[name]


def methods_for_pair(teacher_model: str, student_model: str) -> list[str]:
    """The registered methods that accept this teacher/student pair, in registry order."""
    return [name for name, cls in _DISTILLERS.items() if cls.accepts_pair(teacher_model, student_model)]


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


def distill_recipe(name: str, teacher_model: str | None = None, student_model: str | None = None,
                   logit_standardize: bool = False) -> dict[str, Any]:
    """The ``distill`` section of method ``name``'s standard recipe, with the settings that the
    reference recipe tunes per teacher/student pair (e.g. DKD's ``nckd_weight``) filled in;
    ``logit_standardize``: its logit-standardised recipe (an error for a method that has none, see
    :func:`logit_standardized_methods`)."""
    _check(name)
    ce, kd = _DISTILLERS[name].recipe
    recipe: dict[str, Any] = {"method": name, "ce_weight": ce, "kd_weight": kd,
                              "temperature": DistillConfig.temperature}
    settings = method_settings(name)
    if teacher_model is not None and student_model is not None:
        settings.update(_DISTILLERS[name].pair_settings(teacher_model, student_model))
    if settings:
        recipe[name] = settings
    if not logit_standardize:
        return recipe
    standardized = _DISTILLERS[name].logit_standardized_recipe(recipe, teacher_model, student_model)
    if standardized is None:
        raise ConfigError(f"method {name!r} has no logit-standardised recipe; methods that have one: "
                         + ", ".join(logit_standardized_methods()))
    return standardized


def learned_temperature_methods() -> list[str]:
    """The methods whose logit terms take a learned temperature (``distill.temperature=<name>``)."""
    return [name for name, cls in _DISTILLERS.items() if cls.takes_learned_temperature]


def learned_temperature_recipe(temperature: str, name: str, teacher_model: str | None = None,
                               student_model: str | None = None) -> dict[str, Any]:
    """The ``distill`` section of method ``name``'s standard recipe (:func:`distill_recipe`) with the
    learned ``temperature`` and its standard settings in place of the fixed temperature."""
    cls = temperature_class(temperature)
    if name not in learned_temperature_methods():
        raise ConfigError(f"method {name!r} takes a fixed temperature only; the methods that take a learned one: "
                         + ", ".join(learned_temperature_methods()))
    recipe = distill_recipe(name, teacher_model, student_model)
    return {**recipe, "temperature": temperature, temperature: to_dict(cls.settings_class())}


def published_top1(name: str, teacher_model: str, student_model: str, temperature: str | None = None,
                   logit_standardize: bool = False) -> float | None:
    """The CIFAR-100 top-1 (%) that the paper of method ``name`` (with the learned ``temperature``:
    that temperature's paper; with ``logit_standardize``: the logit-standardisation paper) reports for
    this pair; None where it reports none."""
    _check(name)
    if logit_standardize:
        return _DISTILLERS[name].logit_standardized_published.get((teacher_model, student_model))
    if temperature is None:
        return _DISTILLERS[name].published.get((teacher_model, student_model))
    return temperature_class(temperature).published.get((name, teacher_model, student_model))


def pair_optim(name: str, teacher_model: str, student_model: str, logit_standardize: bool = False) -> dict[str, Any]:
    """The ``optim`` settings that method ``name``'s reference config (with ``logit_standardize``: the
    logit-standardisation repository's) sets for this CIFAR-100 pair over the benchmark schedule."""
    _check(name)
    cls, pair = _DISTILLERS[name], (teacher_model, student_model)
    settings = cls.logit_standardized_pair_optim.get(pair) if logit_standardize else None
    return dict(settings if settings is not None else cls.pair_optim.get(pair, {}))


def logit_standardized_methods() -> list[str]:
    """The methods with a logit-standardised recipe (Sun et al., CVPR 2024), in registry order."""
    return [name for name, cls in _DISTILLERS.items()
            if cls.logit_standardized_recipe(distill_recipe(name)) is not None]


def describe_methods() -> str:
    """A human-readable list of every method with its recipe weights and settings (``intrakd methods``)."""
    lines = []
    for name, cls in _DISTILLERS.items():
        ce, kd = cls.recipe
        lines.append(f"{name}: {(cls.__doc__ or '').strip().splitlines()[0]}")
        lines.append(f"    distill.method={name}  (recipe: distill.ce_weight={ce} distill.kd_weight={kd})")
        if cls.settings_class is not None:
            lines += [f"    {line}" for line in _setting_lines(f"distill.{name}", cls.settings_class)]
        standardized = cls.logit_standardized_recipe(distill_recipe(name))
        if standardized is not None:
            changed = {key: value for key, value in flatten(standardized).items()
                       if flatten(distill_recipe(name)).get(key) != value}
            lines.append(
                "    with logit standardisation (presets <pair>/" + name + "-ls-vanilla|-ls-enriched): "
                         + " ".join(f"distill.{key}={value}" for key, value in changed.items()))
        lines.append("")
    for name in list_temperatures():
        cls = temperature_class(name)
        lines.append(f"{name} (a learned temperature, not a method): {(cls.__doc__ or '').strip().splitlines()[0]}")
        lines.append(f"    distill.temperature={name}  with the methods {', '.join(learned_temperature_methods())} "
                     f"(presets <pair>/<method>-{name}-vanilla|-enriched)")
        lines += [f"    {line}" for line in _setting_lines(f"distill.{name}", cls.settings_class)]
        lines.append("")
    lines.append("Every method takes these settings (each method's recipe fills the weights left unset):")
    common = [f for f in dataclasses.fields(DistillConfig) if "help" in f.metadata and f.name != "method"]
    lines += [f"    {line}" for line in _setting_lines("distill", DistillConfig, common)]
    return "\n".join(lines)


def methods_data() -> dict[str, dict[str, Any]]:
    """Every method's paper, kind, recipe weights and default settings (``intrakd methods --json``)."""
    return {name: {"paper": (cls.__doc__ or "").strip().splitlines()[0], "kind": cls.kind,
                   "recipe": {"ce_weight": cls.recipe[0], "kd_weight": cls.recipe[1]},
                   "settings": method_settings(name)}
            for name, cls in _DISTILLERS.items()}


def methods_table() -> str:
    """The methods as a Markdown table (``intrakd methods --markdown``, docs/methods.md): name, paper,
    kind, recipe weights and default settings; then the learned temperatures and the methods that take them."""
    lines = ["| method | paper | kind | recipe (CE, KD weight) | default settings |", "|---|---|---|---|---|"]
    for name, cls in _DISTILLERS.items():
        paper = (cls.__doc__ or "").strip().splitlines()[0]
        settings = ", ".join(f"`{key}={value}`" for key, value in flatten(method_settings(name)).items()) or "-"
        lines.append(f"| `{name}` | {paper} | {cls.kind} | {cls.recipe[0]}, {cls.recipe[1]} | {settings} |")
    lines += ["", "| learned temperature (`distill.temperature=`) | paper | methods that take it | default settings |",
              "|---|---|---|---|"]
    takers = ", ".join(f"`{name}`" for name in learned_temperature_methods())
    for name in list_temperatures():
        cls = temperature_class(name)
        paper = (cls.__doc__ or "").strip().splitlines()[0]
        settings = ", ".join(f"`{key}={value}`" for key, value in to_dict(cls.settings_class()).items())
        lines.append(f"| `{name}` | {paper} | {takers} | {settings} |")
    return "\n".join(lines) + "\n"


def reference_of(name: str) -> ReferenceDifferences:
    """The reference code method ``name`` follows and its deliberate differences from it."""
    _check(name)
    return _REFERENCES[name]


def differences_table() -> str:
    """The table "Differences from the reference code" (``intrakd methods --markdown``,
    docs/methods.md): one row per difference, "none" for a method without any."""
    lines = ["| method | reference file | what differs | why | expected effect |", "|---|---|---|---|---|"]
    for name, ref in _REFERENCES.items():
        rows = ref.differences or (Difference("none", "-", "-"),)
        lines += [f"| `{name}` | {ref.reference} | {row.what} | {row.why} | {row.effect} |" for row in rows]
    return "\n".join(lines) + "\n"


def _setting_lines(prefix: str, section: type, fields: list[dataclasses.Field] | None = None) -> list[str]:
    """``prefix.name=default  help`` for every field of ``section`` made with ``setting()``."""
    return [f"{prefix}.{f.name}={_default(f)}  {f.metadata.get('help', '')}".rstrip()
            for f in (fields if fields is not None else dataclasses.fields(section))]


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _check(name: str) -> None:
    if name not in _DISTILLERS:
        raise ConfigError(f"unknown distillation method {name!r}; available: {', '.join(list_distillers())}")
