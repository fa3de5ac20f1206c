"""Reading a configuration: YAML files and ``key.sub=value`` overrides into the schema's dataclasses.

Unknown keys and wrong types are errors that name the key and what is allowed.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from intrakd.config.errors import ConfigError
from intrakd.config.schema import DATASET_MODELS, StudentConfig

C = TypeVar("C")


_KIND_WORDS = {int: "a whole number", float: "a number", str: "a text", bool: "true or false"}
"""How an error names the kind of value a setting takes."""


def _describe(hint: Any) -> str:
    """The kind of value a type hint takes, in words (``a number``, ``'auto'``)."""
    if hint in _KIND_WORDS:
        return _KIND_WORDS[hint]
    if typing.get_origin(hint) is Literal:
        return " or ".join(map(repr, typing.get_args(hint)))
    if typing.get_origin(hint) is list:
        return f"a list of {_describe(typing.get_args(hint)[0]).removeprefix('a ')}s"
    return "a mapping of settings" if dataclasses.is_dataclass(hint) else str(hint)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of settings, got {value!r}")
        return from_dict(hint, value, prefix=f"{key}.")
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as err:
                errors.append(str(err))
        if len(errors) == 1:
            raise ConfigError(errors[0])
        forms = [_describe(option) for option in options if option is not type(None)]
        null = " or null" if type(None) in options else ""
        raise ConfigError(f"{key}: expected {', or '.join(forms)}{null}, got {value!r}")
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, choices))}")
        return value
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if hint is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            return float(value)  # YAML reads "1e-4" as a string
        except ValueError:
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if hint in (int, float, str, bool) and (type(value) is not hint):
        raise ConfigError(f"{key}: expected {_KIND_WORDS[hint]}, got {value!r}")
    return value


def from_dict(cls: type[C], values: dict[str, Any], prefix: str = "") -> C:
    """Build dataclass ``cls`` from a nested dict, rejecting unknown keys and wrong types."""
    hints = config_fields(cls)
    unknown = sorted(set(values) - hints.keys())
    if unknown:
        raise ConfigError(
            f"unknown config key {prefix}{unknown[0]!s}; valid keys here: {', '.join(prefix + k for k in hints)}"
        )
    kwargs = {name: _coerce(value, hints[name], prefix + name) for name, value in values.items()}
    return cls(**kwargs)


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: a nested configuration by dotted keys."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def config_fields(cls: type) -> dict[str, Any]:
    """The keys of a section and their types: its ``config_fields()`` when it has open-ended keys
    (the distillation methods' sections), else its dataclass fields."""
    custom = getattr(cls, "config_fields", None)
    return custom() if custom is not None else typing.get_type_hints(cls)


def to_dict(config: Any) -> dict[str, Any]:
    """A plain nested dict of a configuration (what is written to a run folder); a field marked
    ``inline`` (a mapping of sections) contributes its sections as keys of its own."""
    values: dict[str, Any] = {}
    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        if item.metadata.get("inline"):
            values.update({name: _plain(section) for name, section in value.items()})
        else:
            values[item.name] = _plain(value)
    return values


def _plain(value: Any) -> Any:
    return to_dict(value) if dataclasses.is_dataclass(value) else copy.deepcopy(value)


def read_yaml(path: str | Path) -> Any:
    """The YAML document in ``path``; a :class:`ConfigError` naming the file, the problem and where
    it is when the text is not valid YAML."""
    try:
        return yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {_yaml_problem(err)}") from None


def parse_yaml_value(raw: str, what: str) -> Any:
    """``raw`` read as YAML (``"0.1"`` -> 0.1, ``"[60, 75]"`` -> a list); a :class:`ConfigError`
    naming ``what`` when it is not valid YAML."""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ConfigError(f"{what}: {raw!r} is not a valid YAML value: {_yaml_problem(err)}") from None


def _yaml_problem(err: yaml.YAMLError) -> str:
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    mark = getattr(err, "problem_mark", None)
    return problem + (f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else "")


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings (values parsed as YAML) to a nested dict, returning a copy."""
    result = yaml.safe_load(yaml.safe_dump(values)) or {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. optim.lr=0.1)")
        node = result
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
        node[parts[-1]] = parse_yaml_value(raw, f"override {item!r}") if raw != "" else None
    return result


def load_config(cls: type[C], path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> C:
    """Resolve a configuration: ``base`` (a preset), then the YAML file at ``path``, then overrides."""
    values: dict[str, Any] = yaml.safe_load(yaml.safe_dump(base or {}))
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        loaded = read_yaml(path) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of settings at the top level")
        values = _merge(values, loaded)
    values = apply_overrides(values, overrides or [])
    dataset = values.get("data", {}).get("dataset") if isinstance(values.get("data"), dict) else None
    if "model" not in values and isinstance(dataset, str) and dataset in DATASET_MODELS:
        values["model"] = DATASET_MODELS[dataset][cls is StudentConfig]
    config = from_dict(cls, values)
    config.validate()
    return config


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged
