"""Typed run configuration: dataclasses loaded from YAML plus ``key.sub=value`` overrides.

Defaults are the standard CIFAR-100 recipe of METHOD.md. Unknown keys and wrong types are errors
that name the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml


class ConfigError(ValueError):
    """A configuration key or value that cannot be used."""


@dataclass
class DataConfig:
    dataset: str = "cifar100"
    """'digits' (embedded, no download), 'cifar100', 'tiny_imagenet' (official layout), 'imagenet' or
    'imagefolder' (both: root/train/<class>/* and root/val/<class>/*)."""
    root: str | None = None
    """Folder holding the dataset (for cifar100: the folder with 'cifar-100-python'; for tiny_imagenet:
    'tiny-imagenet-200' or the folder holding it)."""
    batch_size: int = 64
    eval_batch_size: int = 512
    val_per_class: int = 0
    """Hold out the last N training images of every class as the eval split (0: eval on test)."""
    train_per_class: int | None = None
    """Train on the first N images of every class only (reduced protocols, tests)."""
    eval_per_class: int | None = None
    """Evaluate on the first N images of every class only."""
    workers: int = 8
    """Folder datasets: worker processes decoding and augmenting images (0: in the main process)."""
    image_size: int | None = None
    """Folder datasets: side of the training and eval crops (None: 64 for tiny_imagenet, 224 otherwise)."""
    augment: Literal["auto", "pad_crop", "resized_crop"] = "auto"
    """Folder datasets: 'pad_crop' (resize to image_size, random crop with image_size/8 zero padding,
    flip), 'resized_crop' (RandomResizedCrop + flip; eval resize to image_size/0.875, centre crop), or
    'auto': pad_crop for tiny_imagenet, resized_crop for imagenet and imagefolder."""
    bad_images: Literal["error", "skip"] = "error"
    """Folder datasets: an unreadable image stops the run, naming every such file found ('error'), or
    is left out of its batch and named once ('skip'; counted as skipped_images)."""
    in_memory: bool = False
    """Folder datasets: decode every image once into a uint8 tensor and augment batches on the device
    (fast; needs pad_crop and memory for the whole split, e.g. 1.2 GB for Tiny ImageNet)."""


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


DistillMethod = Literal["kd", "dkd", "crd", "rkd", "fitnet", "at", "sp", "pkt"]
"""The distillation methods; each has a module in ``intrakd.objectives``."""

METHOD_WEIGHTS: dict[str, tuple[float, float]] = {
    "kd": (0.1, 0.9),
    "dkd": (1.0, 0.0),
    "crd": (1.0, 0.0),
    "rkd": (1.0, 0.0),
    "fitnet": (1.0, 0.0),
    "at": (1.0, 0.0),
    "sp": (1.0, 0.0),
    "pkt": (1.0, 0.0),
}
"""``(ce_weight, kd_weight)`` of each method's standard CIFAR-100 recipe (mdistiller / RepDistiller):
KD weighs CE 0.1 and KD 0.9; every other method keeps CE at 1 and adds no KD term unless asked."""


def _setting(default: Any, doc: str) -> Any:
    """A dataclass field with a one-line description (listed by `intrakd methods`)."""
    return field(default=default, metadata={"help": doc})


@dataclass
class DKDSettings:
    """Decoupled KD (Zhao et al., CVPR 2022): target-class and non-target-class KD terms."""

    tckd_weight: float = _setting(1.0, "weight of the target-class term TCKD (alpha in the paper)")
    nckd_weight: float = _setting(8.0, "weight of the non-target-class term NCKD (beta in the paper; "
                                       "2 to 8 depending on the pair)")
    warmup_epochs: int = _setting(20, "the DKD term's weight ramps up linearly over this many epochs (0: none)")


@dataclass
class CRDSettings:
    """Contrastive representation distillation (Tian et al., ICLR 2020) with a memory of embeddings."""

    weight: float = _setting(0.8, "weight of the CRD term (student and teacher anchors summed)")
    feat_dim: int = _setting(128, "dimension of the learned, L2-normalised embeddings")
    num_negatives: int = _setting(16384, "negatives per anchor, drawn from the memory on the device")
    temperature: float = _setting(0.07, "temperature of the exponential scores")
    momentum: float = _setting(0.5, "memory update: new = normalise(momentum * old + (1 - momentum) * current)")
    negatives: Literal["other_class", "uniform"] = _setting(
        "other_class", "where negatives come from: samples of other classes (the reference recipe) or "
                       "all samples uniformly")


@dataclass
class RKDSettings:
    """Relational KD (Park et al., CVPR 2019): distance and angle relations of the embeddings."""

    distance_weight: float = _setting(25.0, "weight of the pairwise-distance term")
    angle_weight: float = _setting(50.0, "weight of the triplet-angle term")


@dataclass
class FitNetSettings:
    """FitNets (Romero et al., ICLR 2015): regress a student stage onto the teacher's through a connector."""

    hint_weight: float = _setting(100.0, "weight of the hint (mean squared error) term")
    hint_layer: int = _setting(2, "index of the stage feature used by both models (earliest first; may be "
                                  "negative)")


@dataclass
class ATSettings:
    """Attention transfer (Zagoruyko & Komodakis, ICLR 2017) on the stage features."""

    weight: float = _setting(1000.0, "weight of the attention term (summed over stages)")
    p: float = _setting(2.0, "attention map = mean over channels of |feature|^p")
    first_stage: int = _setting(1, "first stage feature used (the standard skips the stem at index 0)")


@dataclass
class SPSettings:
    """Similarity-preserving KD (Tung & Mori, ICCV 2019) on the last stage feature."""

    weight: float = _setting(3000.0, "weight of the similarity-preserving term")


@dataclass
class PKTSettings:
    """Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018) on the embeddings."""

    weight: float = _setting(30000.0, "weight of the PKT term")


@dataclass
class DistillConfig:
    """The student objective: ``ce_weight * CE + kd_weight * KD + the method's own terms``.

    One line picks a method (``distill.method=dkd``); ``ce_weight`` and ``kd_weight`` left unset take
    that method's recipe (:data:`METHOD_WEIGHTS`), and :meth:`validate` writes them in, so the
    resolved values are what a run folder records. Each method's settings are the section named after
    it (``distill.dkd.nckd_weight``); an unknown setting is an error.
    """

    method: DistillMethod = "kd"
    ce_weight: float | None = None
    """Weight of cross-entropy with the labels (unset: the method's recipe)."""
    kd_weight: float | None = None
    """Weight of Hinton's KD term ``T^2 KL`` (unset: the method's recipe; > 0 adds KD to any method)."""
    temperature: float = 4.0
    """Softmax temperature of the KD and DKD terms."""
    dkd: DKDSettings = field(default_factory=DKDSettings)
    crd: CRDSettings = field(default_factory=CRDSettings)
    rkd: RKDSettings = field(default_factory=RKDSettings)
    fitnet: FitNetSettings = field(default_factory=FitNetSettings)
    at: ATSettings = field(default_factory=ATSettings)
    sp: SPSettings = field(default_factory=SPSettings)
    pkt: PKTSettings = field(default_factory=PKTSettings)

    @classmethod
    def recipe(cls, method: str = "kd") -> DistillConfig:
        """The validated default configuration of ``method`` (its standard recipe)."""
        cfg = cls(method=method)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Check every value and fill unset ``ce_weight`` / ``kd_weight`` with the method's recipe."""
        ce, kd = METHOD_WEIGHTS[self.method]
        self.ce_weight = ce if self.ce_weight is None else self.ce_weight
        self.kd_weight = kd if self.kd_weight is None else self.kd_weight
        for key, rule in _DISTILL_RULES.items():
            value = operator.attrgetter(key)(self)
            if not _RULE_CHECKS[rule](value):
                raise ConfigError(f"distill.{key} must be {rule}, got {value}")


_RULE_CHECKS: dict[str, Callable[[float], bool]] = {
    ">= 0": lambda v: v >= 0, ">= 1": lambda v: v >= 1, "> 0": lambda v: v > 0, "in [0, 1)": lambda v: 0 <= v < 1,
}
_DISTILL_RULES = {
    "ce_weight": ">= 0", "kd_weight": ">= 0", "temperature": "> 0",
    "dkd.tckd_weight": ">= 0", "dkd.nckd_weight": ">= 0", "dkd.warmup_epochs": ">= 0",
    "crd.weight": ">= 0", "crd.feat_dim": ">= 1", "crd.num_negatives": ">= 1", "crd.temperature": "> 0",
    "crd.momentum": "in [0, 1)",
    "rkd.distance_weight": ">= 0", "rkd.angle_weight": ">= 0",
    "fitnet.hint_weight": ">= 0",
    "at.weight": ">= 0", "at.p": "> 0", "at.first_stage": ">= 0",
    "sp.weight": ">= 0", "pkt.weight": ">= 0",
}


@dataclass
class CheckpointConfig:
    """When checkpoints are written and how many are kept (``checkpoints/`` of the run folder).

    A checkpoint is written at the end of every ``every_epochs``-th epoch and of the last one, when
    the eval accuracy improves (``best.pt``), on SIGTERM/SIGINT, and mid-epoch every
    ``every_minutes`` minutes and every ``every_steps`` steps (0 turns either off). Each holds the
    whole training state, so a run resumed from any of them ends exactly as an uninterrupted one.
    """

    every_epochs: int = 1
    every_minutes: float = 30.0
    every_steps: int = 0
    keep_last: int = 2
    """Checkpoints kept besides the best one (>= 1)."""


@dataclass
class TrainConfig:
    """How the loop treats numerical faults."""

    skip_nonfinite_steps: int = 0
    """Skip (do not apply) up to this many steps whose loss is NaN or Inf, over the whole run;
    0 stops the run at the first one. The limit exceeded, the run stops."""


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
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    perf: PerfConfig = field(default_factory=PerfConfig)
    dist: DistConfig = field(default_factory=DistConfig)

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first setting out of its range."""
        intra = self.intra
        _require_finite("intra", intra)
        if intra.weight < 0:
            raise ConfigError(f"intra.weight (lambda) must be >= 0, got {intra.weight}")
        if not -1 <= intra.delta <= 1:
            raise ConfigError(f"intra.delta must lie in [-1, 1] (-1: no gate), got {intra.delta}")
        if intra.margin == "probability" and intra.delta == 1:
            raise ConfigError("intra.delta=1 with intra.margin=probability: the probability margin never exceeds 1, "
                              "so no anchor would ever pass the gate; choose a delta below 1")
        if intra.temperature <= 0:
            raise ConfigError(f"intra.temperature must be > 0, got {intra.temperature}")
        if intra.cache_size < 1:
            raise ConfigError(f"intra.cache_size (the cache capacity) must be >= 1, got {intra.cache_size} "
                              "(turn the cache off with intra.cache=false)")
        if intra.head_dim < 1:
            raise ConfigError(f"intra.head_dim must be >= 1, got {intra.head_dim}")
        if intra.max_age is not None and intra.max_age < 0:
            raise ConfigError(f"intra.max_age must be >= 0 (or null: no limit), got {intra.max_age}")
        if intra.min_negatives < 1:
            raise ConfigError(f"intra.min_negatives must be >= 1, got {intra.min_negatives}")
        if self.views not in (1, 2):
            raise ConfigError(f"views must be 1 or 2, got {self.views}")
        if intra.weight > 0 and self.views != 2:
            raise ConfigError("the intra-class loss needs two views: set views=2 (or intra.weight=0)")
        _validate_common(self.data, self.optim, self.checkpoint, self.train, self.perf)


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
    distill: DistillConfig = field(default_factory=DistillConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    perf: PerfConfig = field(default_factory=PerfConfig)
    dist: DistConfig = field(default_factory=DistConfig)

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first setting out of its range."""
        self.distill.validate()
        _validate_common(self.data, self.optim, self.checkpoint, self.train, self.perf)


def _require_finite(prefix: str, section: Any) -> None:
    """Reject NaN and infinite floats in a section (they pass every ``<``/``>`` range check)."""
    for item in dataclasses.fields(section):
        value = getattr(section, item.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{prefix}.{item.name} must be a finite number, got {value}")


def _validate_common(
    data: DataConfig, optim: OptimConfig, checkpoint: CheckpointConfig, train: TrainConfig, perf: PerfConfig
) -> None:
    for name in ("batch_size", "eval_batch_size"):
        if getattr(data, name) < 1:
            raise ConfigError(f"data.{name} must be >= 1, got {getattr(data, name)}")
    for name in ("val_per_class", "train_per_class", "eval_per_class"):
        value = getattr(data, name)
        if value is not None and value < 0:
            raise ConfigError(f"data.{name} must be >= 0, got {value}")
    if data.train_per_class == 0:
        raise ConfigError("data.train_per_class must be >= 1 (or null: every training image), got 0")
    _require_finite("optim", optim)
    if data.workers < 0:
        raise ConfigError(f"data.workers must be >= 0, got {data.workers}")
    if data.image_size is not None and data.image_size < 8:
        raise ConfigError(f"data.image_size must be >= 8 pixels, got {data.image_size}")
    if optim.epochs < 1:
        raise ConfigError(f"optim.epochs must be >= 1, got {optim.epochs}")
    if optim.lr <= 0:
        raise ConfigError(f"optim.lr must be > 0, got {optim.lr}")
    for name in ("momentum", "weight_decay", "lr_decay"):
        if getattr(optim, name) < 0:
            raise ConfigError(f"optim.{name} must be >= 0, got {getattr(optim, name)}")
    _require_finite("checkpoint", checkpoint)
    if checkpoint.every_epochs < 1:
        raise ConfigError(f"checkpoint.every_epochs must be >= 1, got {checkpoint.every_epochs}")
    if checkpoint.keep_last < 1:
        raise ConfigError(f"checkpoint.keep_last must be >= 1, got {checkpoint.keep_last}")
    for name in ("every_minutes", "every_steps"):
        if getattr(checkpoint, name) < 0:
            raise ConfigError(f"checkpoint.{name} must be >= 0 (0: off), got {getattr(checkpoint, name)}")
    if train.skip_nonfinite_steps < 0:
        raise ConfigError(f"train.skip_nonfinite_steps must be >= 0 (0: stop at the first), "
                          f"got {train.skip_nonfinite_steps}")
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
