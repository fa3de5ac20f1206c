"""Typed run configuration: dataclasses loaded from YAML plus ``key.sub=value`` overrides.

Defaults are the standard CIFAR-100 recipe of METHOD.md. Unknown keys and wrong types are errors
that name the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml


class ConfigError(ValueError):
    """A configuration key or value that cannot be used."""


@dataclass
class DataConfig:
    dataset: str = "cifar100"
    """'digits' (embedded, no download) or 'cifar100'."""
    root: str | None = None
    """Folder holding the dataset (for cifar100: the folder with 'cifar-100-python')."""
    batch_size: int = 64
    eval_batch_size: int = 512
    val_per_class: int = 0
    """Hold out the last N training images of every class as the eval split (0: eval on test)."""
    train_per_class: int | None = None
    """Train on the first N images of every class only (reduced protocols, tests)."""
    eval_per_class: int | None = None
    """Evaluate on the first N images of every class only."""


@dataclass
class OptimConfig:
    epochs: int = 240
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: list[int] = field(default_factory=lambda: [150, 180, 210])
    lr_decay: float = 0.1


@dataclass
class IntraConfig:
    """The teacher's intra-class contrastive term (METHOD.md). ``weight = 0`` is the vanilla teacher."""

    weight: float = 0.02
    """lambda."""
    temperature: float = 0.1
    delta: float = 0.5
    """Margin gate: anchors with margin > delta contribute; -1 disables the gate."""
    margin: Literal["probability", "logit"] = "probability"
    normalize: bool = True
    head: Literal["none", "linear", "mlp"] = "none"
    head_dim: int = 128
    symmetric: bool = True
    """Both views serve as anchors."""
    cache: bool = True
    cache_size: int = 64
    max_age: int | None = None
    min_negatives: int = 1
    clear_after_use: bool = False


@dataclass
class KDConfig:
    """Student objective: ``ce_weight * CE + kd_weight * T^2 KL``."""

    method: str = "kd"
    temperature: float = 4.0
    ce_weight: float = 0.1
    kd_weight: float = 0.9


@dataclass
class PerfConfig:
    """Speed settings (applied by ``intrakd.train.accel``); ``"auto"`` picks the measured-best per device."""

    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """Autocast dtype of the forward pass; "auto": bf16 on hardware that computes in it natively
    (Ampere or newer GPUs, CPUs with AVX512-BF16 or AMX), else fp32. Loss math is float32 always."""
    channels_last: bool | Literal["auto"] = "auto"
    """Channels-last memory format for the models; "auto": on where "auto" picks bf16, else off."""
    fused_optimizer: bool | Literal["auto"] = "auto"
    """Fused SGD kernel; "auto": on for CUDA, off (PyTorch's default implementation) on the CPU."""
    cudnn_benchmark: bool = True
    """Let cuDNN pick the fastest convolution algorithms (CUDA only; inputs have fixed shapes)."""
    compile: bool = False
    """Compile the training step (model forward + objective) with ``torch.compile``."""
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    threads: int | None = None
    """CPU threads of this process (None: PyTorch's default, divided among the processes of a node)."""


@dataclass
class DistConfig:
    """Data-parallel training, active when launched by ``torchrun`` (``WORLD_SIZE > 1``).

    ``data.batch_size`` is the global batch: each of the N processes trains on ``batch_size / N``
    images per step, so a recipe means the same thing on any number of GPUs.
    """

    backend: Literal["auto", "nccl", "gloo"] = "auto"
    """Process-group backend; "auto": nccl on CUDA, gloo on the CPU."""
    sync_batchnorm: bool = False
    """Batch-norm statistics over the global batch (CUDA only)."""


@dataclass
class TeacherConfig:
    model: str = "resnet32x4"
    views: int = 2
    """Augmented views per image (the vanilla baseline may use 1 or 2; the intra loss needs 2)."""
    seed: int = 0
    device: str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    intra: IntraConfig = field(default_factory=IntraConfig)
    perf: PerfConfig = field(default_factory=PerfConfig)
    dist: DistConfig = field(default_factory=DistConfig)

    def validate(self) -> None:
        intra = self.intra
        if intra.weight < 0:
            raise ConfigError(f"intra.weight (lambda) must be >= 0, got {intra.weight}")
        if not -1 <= intra.delta <= 1:
            raise ConfigError(f"intra.delta must lie in [-1, 1] (-1: no gate), got {intra.delta}")
        if intra.temperature <= 0:
            raise ConfigError(f"intra.temperature must be > 0, got {intra.temperature}")
        if intra.cache_size < 1:
            raise ConfigError(f"intra.cache_size must be >= 1 (turn the cache off with intra.cache=false)")
        if self.views not in (1, 2):
            raise ConfigError(f"views must be 1 or 2, got {self.views}")
        if intra.weight > 0 and self.views != 2:
            raise ConfigError("the intra-class loss needs two views: set views=2 (or intra.weight=0)")
        _validate_common(self.data, self.optim, self.perf)


@dataclass
class StudentConfig:
    model: str = "resnet8x4"
    teacher: str | None = None
    """Path of the teacher checkpoint (intrakd's own, or a {'model': state_dict} file)."""
    teacher_model: str | None = None
    """Architecture of the teacher, when its checkpoint does not name it."""
    seed: int = 0
    device: str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    distill: KDConfig = field(default_factory=KDConfig)
    perf: PerfConfig = field(default_factory=PerfConfig)
    dist: DistConfig = field(default_factory=DistConfig)

    def validate(self) -> None:
        if self.distill.temperature <= 0:
            raise ConfigError(f"distill.temperature must be > 0, got {self.distill.temperature}")
        if self.distill.ce_weight < 0 or self.distill.kd_weight < 0:
            raise ConfigError("distill.ce_weight and distill.kd_weight must be >= 0")
        _validate_common(self.data, self.optim, self.perf)


def _validate_common(data: DataConfig, optim: OptimConfig, perf: PerfConfig) -> None:
    if data.batch_size < 1 or data.eval_batch_size < 1:
        raise ConfigError("data.batch_size and data.eval_batch_size must be >= 1")
    if optim.epochs < 1:
        raise ConfigError(f"optim.epochs must be >= 1, got {optim.epochs}")
    if optim.lr <= 0:
        raise ConfigError(f"optim.lr must be > 0, got {optim.lr}")
    if perf.threads is not None and perf.threads < 1:
        raise ConfigError(f"perf.threads must be >= 1 (or null for the default), got {perf.threads}")


C = TypeVar("C")


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
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} matches none of {hint}")
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
            raise ConfigError(f"{key}: expected float, got {value!r}") from None
    if hint in (int, float, str, bool) and (type(value) is not hint):
        raise ConfigError(f"{key}: expected {hint.__name__}, got {type(value).__name__} {value!r}")
    return value


def from_dict(cls: type[C], values: dict[str, Any], prefix: str = "") -> C:
    """Build dataclass ``cls`` from a nested dict, rejecting unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(values) - hints.keys())
    if unknown:
        raise ConfigError(
            f"unknown config key {prefix}{unknown[0]!s}; valid keys here: {', '.join(prefix + k for k in hints)}"
        )
    kwargs = {name: _coerce(value, hints[name], prefix + name) for name, value in values.items()}
    return cls(**kwargs)


def to_dict(config: Any) -> dict[str, Any]:
    """A plain nested dict of a configuration (what is written to a run folder)."""
    return dataclasses.asdict(config)


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
        node[parts[-1]] = yaml.safe_load(raw) if raw != "" else None
    return result


def load_config(cls: type[C], path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> C:
    """Resolve a configuration: ``base`` (a preset), then the YAML file at ``path``, then overrides."""
    values: dict[str, Any] = yaml.safe_load(yaml.safe_dump(base or {}))
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of settings at the top level")
        values = _merge(values, loaded)
    values = apply_overrides(values, overrides or [])
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
