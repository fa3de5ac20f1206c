"""The configuration schema: typed sections with their defaults and range checks.

Defaults are the standard CIFAR-100 recipe of METHOD.md. Reading YAML and ``key.sub=value``
overrides into these classes is :mod:`intrakd.config.parse`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from intrakd.config.errors import ConfigError

RUN_COMMANDS = {"teacher": "train-teacher", "student": "distill"}
"""The command that starts and resumes a run of each kind ('teacher': :class:`TeacherConfig`,
'student': :class:`StudentConfig`); the kind is what checkpoints and reports record."""

RESULT_NEUTRAL_KEYS = ("device", "data.root", "data.download", "data.workers", "data.eval_batch_size", "data.in_memory",
                       "perf.", "checkpoint.", "dist.", "train.")
"""Settings that say where a run executes and how fast (device, where the data lies and how it is
loaded, speed settings, checkpoint schedule, data-parallel setup, the non-finite step policy), never
what it computes: runs that differ only in these are repeats of one configuration. A key ending in
``.`` stands for its whole section (see :func:`key_in`)."""


PATH_KEYS = ("data.root", "weights", "teacher", "teacher_outputs")
"""Settings that name a file or folder. A run records them as absolute paths, so that the same
command (``--resume``, a sweep run again) finds them from any working directory; comparisons of
configurations resolve them first."""


def key_in(key: str, keys: Iterable[str]) -> bool:
    """Whether the dotted ``key`` is one of ``keys``, or lies in a section named by one ending in ``.``."""
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in keys)


def setting(default: Any, doc: str, rule: str | None = None, fix: str | None = None) -> Any:
    """A dataclass field with a one-line description (listed by `intrakd methods`) and, optionally,
    the range its values must lie in (a key of :data:`RULES`: ``">= 0"``, ``"> 0"``, ...) and words
    the error adds on how to fix a value outside it. A list default is copied for every instance.
    Every section's values are checked by :func:`check_rules`, the one place that checks a range."""
    if rule is not None and rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; available: {', '.join(RULES)}")
    metadata = {"help": doc, "rule": rule, "fix": fix}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


RULES: dict[str, Callable[[Any], bool]] = {
    ">= 0": lambda v: v >= 0, ">= 1": lambda v: v >= 1, ">= 8": lambda v: v >= 8, "> 0": lambda v: v > 0,
    "in [0, 1)": lambda v: 0 <= v < 1, "1 or 2": lambda v: v in (1, 2),
    ">= 0 or auto": lambda v: v == "auto" or v >= 0,
    "a non-empty list of numbers > 0": lambda v: len(v) > 0 and all(x > 0 for x in v),
    "epochs > 0 in ascending order": lambda v: all(x > 0 for x in v) and list(v) == sorted(v),
}
"""The range rules a setting may declare, by the words an error shows."""


def check_rules(prefix: str, section: Any) -> None:
    """Raise :class:`ConfigError` for the first field of ``section`` that is a float but not finite (NaN
    and infinities pass every ``<``/``>`` range) or lies outside its declared rule (an unset optional
    value, None, satisfies any rule). ``prefix``: the section's name ("" for the top level)."""
    for item in dataclasses.fields(section):
        rule, fix = item.metadata.get("rule"), item.metadata.get("fix")
        value = getattr(section, item.name)
        key = f"{prefix}.{item.name}" if prefix else item.name
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {value}")
        if rule is not None and value is not None and not RULES[rule](value):
            raise ConfigError(f"{key} must be {rule}, got {value}" + (f" ({fix})" if fix else ""))


@dataclass
class DataConfig:
    dataset: str = "cifar100"
    """'digits' (embedded, no download), 'cifar100', 'cifar10', 'mnist', 'fashion_mnist' (official file
    layouts), 'tiny_imagenet' (official layout), 'imagenet' or 'imagefolder' (both: root/train/<class>/*
    and root/val/<class>/*). A dataset of
    :data:`DATASET_MODELS` brings its own default teacher and student models."""
    root: str | None = None
    """Folder holding the dataset (for cifar100: the folder with 'cifar-100-python'; for tiny_imagenet:
    'tiny-imagenet-200' or the folder holding it)."""
    download: bool = False
    """cifar100, cifar10, mnist, fashion_mnist: fetch the dataset into ``root`` with torchvision's
    downloader when it is not there (needs the network; never done unless asked)."""
    batch_size: int = setting(64, "Images of one training step (the global batch under torchrun).", ">= 1")
    eval_batch_size: int = setting(512, "Images of one evaluation batch.", ">= 1")
    val_per_class: int = setting(
        0, "Hold out the last N training images of every class as the eval split (0: eval on test).", ">= 0")
    train_per_class: int | None = setting(
        None, "Train on the first N images of every class only (reduced protocols, tests).", ">= 1",
        "or null: every training image")
    eval_per_class: int | None = setting(None, "Evaluate on the first N images of every class only.", ">= 0")
    workers: int = setting(
        8, "Folder datasets: worker processes decoding and augmenting images (0: in the main process).", ">= 0")
    image_size: int | None = setting(
        None, "Folder datasets: side of the training and eval crops (None: 64 for tiny_imagenet, 224 otherwise). "
              "Tensor datasets (digits, cifar100): resize every image to this side once at load time (antialiased; "
              "the crop padding scales with it), e.g. 16 for a cheaper CIFAR protocol (None: native size).", ">= 8")
    classes: list[int | str] | None = None
    """Train and evaluate on these classes only, relabelled 0..k-1 in the order given: class indices,
    or for cifar100 also fine class names and superclass names (a superclass stands for its 5 fine
    classes, e.g. [aquatic_mammals, fish]). None: every class."""
    labels: Literal["fine", "coarse"] = "fine"
    """cifar100: 'fine' (the 100 classes) or 'coarse': the 20 superclasses are the classes ("CIFAR-20",
    each a union of 5 fine classes), relabelled 0..g-1 in superclass order (with ``classes``: the
    superclasses of the classes given). The per-class counts (val_per_class, train_per_class,
    eval_per_class) still count images per fine class, so every superclass keeps its classes balanced."""
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
    mixup: float = setting(
        0.0, "MixUp of every training batch (torchvision's MixUp): each image blended with the one before it in the "
             "batch at a ratio drawn from Beta(alpha, alpha), its target the same blend of their labels; this is "
             "alpha (0: off; e.g. 0.2, DeiT's 0.8).", ">= 0", "0: off")
    cutmix: float = setting(
        0.0, "CutMix of every training batch (torchvision's CutMix): a box of the image before it in the batch "
             "pasted in, its target mixed by the box's area; this is the alpha of Beta(alpha, alpha) that draws the "
             "area (0: off; e.g. 1.0). With data.mixup too, each batch takes one of the two with probability 0.5.",
        ">= 0", "0: off")

    @property
    def mixes(self) -> bool:
        """Whether training batches are mixed (``mixup`` or ``cutmix`` > 0)."""
        return self.mixup > 0 or self.cutmix > 0


@dataclass
class ModelInputConfig:
    """What one model is fed: the data's uint8 view, resized to ``size`` (antialiased) and normalised
    with ``mean`` and ``std``. An unset field is the model's own: what its checkpoint recorded (a teacher
    trained by intrakd), timm's ``pretrained_cfg`` statistics (timm models started from weights), or
    the dataset's statistics and image size."""

    mean: list[float] | None = None
    """Per-channel mean of pixels in [0, 1] subtracted (e.g. [0.5, 0.5, 0.5]); None: the model's own."""
    std: list[float] | None = None
    """Per-channel standard deviation divided by; None: the model's own."""
    size: int | None = None
    """Side in pixels the view is resized to; None: the model's own (the data's image side)."""

    def validate(self, name: str) -> None:
        for field_name in ("mean", "std"):
            values = getattr(self, field_name)
            if values is not None and (not values or not all(math.isfinite(v) for v in values)):
                raise ConfigError(f"{name}.{field_name} must be a list of finite numbers, one per channel, "
                                  f"got {values}")
        if self.std is not None and min(self.std) <= 0:
            raise ConfigError(f"{name}.std must be > 0 in every channel, got {self.std}")
        if self.mean is not None and self.std is not None and len(self.mean) != len(self.std):
            raise ConfigError(f"{name}.mean has {len(self.mean)} values and {name}.std {len(self.std)}: give one per "
                              "channel in both")
        if self.size is not None and self.size < 1:
            raise ConfigError(f"{name}.size must be >= 1 (or null: the model's own), got {self.size}")


@dataclass
class OptimConfig:
    epochs: int = setting(240, "Training epochs.", ">= 1")
    lr: float = setting(0.05, "Initial learning rate of SGD.", "> 0")
    momentum: float = setting(0.9, "SGD momentum.", ">= 0")
    weight_decay: float = setting(5e-4, "L2 weight decay of SGD.", ">= 0")
    milestones: list[int] | None = setting(
        None, "Epochs after which the learning rate is multiplied by lr_decay (twice: given twice), each <= epochs "
              "(null: 150/180/210 of 240 scaled to the epochs, filled in when the configuration is resolved).",
        "epochs > 0 in ascending order", "e.g. optim.milestones=[100,150]")
    lr_decay: float = setting(0.1, "Factor of the learning rate at each milestone.", ">= 0")
    name: Literal["sgd", "adamw"] = "sgd"
    """'sgd': SGD with ``momentum`` and L2 ``weight_decay`` (the benchmark recipe); 'adamw': torch's AdamW
    (default betas) with decoupled ``weight_decay`` (``momentum`` unused)."""
    schedule: Literal["step", "cosine"] = "step"
    """'step': x``lr_decay`` after each milestone; 'cosine': cosine decay to 0 over the epochs after the
    warm-up (``milestones`` unused). Stepped once per epoch."""
    warmup_epochs: int = setting(
        0, "Epochs of linear warm-up from lr/(warmup_epochs+1) before the schedule (0: none); the schedule's "
           "milestones still count from the run's first epoch.", ">= 0")


def scaled_milestones(epochs: int) -> list[int]:
    """The benchmark's lr steps (150, 180, 210 of 240 epochs) scaled to ``epochs`` (steps that fall on the
    same epoch in a short run are all taken there)."""
    return [max(1, round(epochs * f)) for f in (150 / 240, 180 / 240, 210 / 240)]


@dataclass
class IntraConfig:
    """The teacher's intra-class contrastive term (METHOD.md). ``weight = 0`` is the vanilla teacher."""

    weight: float | Literal["auto"] = setting(
        0.02, "lambda; ``auto``: set during training by gradient balancing (docs/auto-lambda.md).", ">= 0 or auto")
    temperature: float = setting(0.1, "Temperature of the intra-class contrastive term.", "> 0")
    delta: float | None = 0.5
    """Margin gate: anchors with margin > delta contribute; null: no gate (every anchor contributes).
    In [-1, 1) for the probability margin, any finite number for the logit margin."""
    margin: Literal["probability", "logit"] = "probability"
    """'probability': p_y - max_{j != y} p_j; 'logit': the same on the raw logits (unbounded)."""
    normalize: bool = True
    head: Literal["none", "linear", "mlp"] = "none"
    head_dim: int = setting(128, "Output size of the projection head.", ">= 1")
    symmetric: bool = True
    """Both views serve as anchors."""
    cache: bool = True
    cache_size: int = setting(64, "Capacity of the feature cache (entries per class).", ">= 1",
                              "turn the cache off with intra.cache=false")
    max_age: int | None = setting(None, "Steps a cache entry may age before it is no negative.", ">= 0",
                                  "or null: no limit")
    min_negatives: int = setting(1, "Negatives an anchor needs to contribute.", ">= 1")
    clear_after_use: bool = False
    exclude_self: bool = True
    """A cached, older embedding of the anchor's own image is never its negative (the cache keeps every
    entry's sample index); false reproduces runs made before the cache knew them."""
    auto_ratio: float = setting(
        0.05, "With ``weight=auto``: lambda makes the intra term's gradient at the embedding this fraction of "
              "cross-entropy's (smoothed over steps).", "> 0")

    @property
    def enabled(self) -> bool:
        """Whether the intra-class term is on (:func:`intra_term_on`)."""
        return intra_term_on(self.weight)


def intra_term_on(weight: float | str) -> bool:
    """Whether an ``intra.weight`` (a number, or ``auto``; also as read from a run folder) turns the
    intra-class term on: ``auto`` or positive."""
    return weight == "auto" or weight > 0


@dataclass(frozen=True)
class DistillMethodSpec:
    """What the configuration knows of a distillation method: its settings section and recipe."""

    name: str
    settings: type | None
    """Dataclass of the method's own settings (the section ``distill.<name>``), or None."""
    recipe: tuple[float, float]
    """``(ce_weight, kd_weight)`` of the method's standard CIFAR-100 recipe."""
    learned_temperature: bool = False
    """Whether the method's logit terms take a learned temperature (``distill.temperature=<name>``)."""


@dataclass(frozen=True)
class LearnedTemperatureSpec:
    """What the configuration knows of a learned temperature (``distill.temperature=<name>``, e.g.
    ``ctkd``): its settings section ``distill.<name>``."""

    name: str
    settings: type


DISTILL_METHODS: dict[str, DistillMethodSpec] = {}
"""The registered methods, in registration order (``intrakd.objectives`` registers them on import)."""
LEARNED_TEMPERATURES: dict[str, LearnedTemperatureSpec] = {}
"""The registered learned temperatures, in registration order (``intrakd.objectives`` registers them)."""


def _check_section_name(name: str, settings: type | None, what: str) -> None:
    """A new section's name must be free: no method, learned temperature or common setting has it."""
    taken = DISTILL_METHODS.keys() | LEARNED_TEMPERATURES.keys() | {f.name for f in dataclasses.fields(DistillConfig)}
    if name in taken:
        raise ValueError(f"{what} {name!r} registered twice (or named like a method, a learned temperature "
                         "or a setting)")
    if settings is not None and not dataclasses.is_dataclass(settings):
        raise TypeError(f"the settings of {what} {name!r} must be a dataclass, got {settings!r}")


def register_distill_method(spec: DistillMethodSpec) -> None:
    """Add a method's section and recipe to the schema (called by ``objectives.register_distiller``)."""
    _check_section_name(spec.name, spec.settings, "distillation method")
    DISTILL_METHODS[spec.name] = spec


def register_learned_temperature(spec: LearnedTemperatureSpec) -> None:
    """Add a learned temperature's name and settings section to the schema (called by
    ``objectives.register_temperature``)."""
    _check_section_name(spec.name, spec.settings, "learned temperature")
    LEARNED_TEMPERATURES[spec.name] = spec


def _registered_methods() -> dict[str, DistillMethodSpec]:
    if not DISTILL_METHODS:
        raise ConfigError("no distillation method is registered: import intrakd.objectives first")
    return DISTILL_METHODS


def _sections() -> dict[str, DistillMethodSpec | LearnedTemperatureSpec]:
    """The settings sections of ``distill``: the methods', then the learned temperatures'."""
    return {**_registered_methods(), **LEARNED_TEMPERATURES}


@dataclass(init=False)
class DistillConfig:
    """The student objective: ``ce_weight * CE + kd_weight * KD + the method's own terms``.

    One line picks a method (``distill.method=dkd``); ``ce_weight`` and ``kd_weight`` left unset take
    that method's recipe, and :meth:`validate` writes them in, so the resolved values are what a run
    folder records. Each registered method with settings has its section, named after it
    (``distill.dkd.nckd_weight``, read as ``cfg.dkd``); an unknown setting is an error.
    """

    method: str = "kd"
    ce_weight: float | None = setting(None, "Weight of cross-entropy with the labels (unset: the method's recipe).",
                                      ">= 0")
    kd_weight: float | None = setting(None, "Weight of Hinton's KD term ``T^2 KL`` (unset: the method's recipe; > 0 "
                                            "adds KD to any method).", ">= 0")
    temperature: float | str = setting(
        4.0, "Softmax temperature of the logit terms (KD, DKD, DIST, MLKD's base temperature): a number > 0, "
             "or the name of a learned temperature (listed above, with the methods that take it).")
    logit_standardize: bool = setting(
        False, "Z-score each sample's teacher and student logits before the temperature softmax of every "
               "KL term (KD, DKD, MLKD's instance level; Sun et al., CVPR 2024). The paper's CIFAR-100 recipe "
               "also changes the temperature and weights (listed per method above): presets "
               "<pair>/<method>-ls-vanilla|-ls-enriched.")
    sections: dict[str, Any] = field(default_factory=dict, metadata={"inline": True})
    """The methods' settings by method name (written inline: ``distill.<method>.<setting>``)."""

    def __init__(self, method: str = "kd", ce_weight: float | None = None, kd_weight: float | None = None,
                 temperature: float | str = 4.0, logit_standardize: bool = False, **sections: Any) -> None:
        self.method, self.ce_weight, self.kd_weight, self.temperature = method, ce_weight, kd_weight, temperature
        self.logit_standardize = logit_standardize
        specs = {name: spec for name, spec in _sections().items() if spec.settings is not None}
        unknown = sorted(sections.keys() - specs.keys())
        if unknown:
            raise ConfigError(f"unknown config key distill.{unknown[0]}; valid keys here: "
                              + ", ".join(f"distill.{k}" for k in self.config_fields()))
        self.sections = {name: sections[name] if name in sections else spec.settings()
                         for name, spec in specs.items()}

    def __getattr__(self, name: str) -> Any:
        sections = self.__dict__.get("sections", {})
        if name in sections:
            return sections[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @classmethod
    def config_fields(cls) -> dict[str, Any]:
        """The keys of the section and their types: the common settings, then one section per
        registered method that has settings and per learned temperature."""
        methods = _registered_methods()
        temperature = float | Literal[tuple(LEARNED_TEMPERATURES)] if LEARNED_TEMPERATURES else float
        return {"method": Literal[tuple(methods)], "ce_weight": float | None, "kd_weight": float | None,
                "temperature": temperature, "logit_standardize": bool,
                **{name: spec.settings for name, spec in _sections().items() if spec.settings is not None}}

    @classmethod
    def recipe(cls, method: str = "kd") -> DistillConfig:
        """The validated default configuration of ``method`` (its standard recipe)."""
        cfg = cls(method=method)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Check every value and fill unset ``ce_weight`` / ``kd_weight`` with the method's recipe."""
        methods = _registered_methods()
        if self.method not in methods:
            raise ConfigError(f"distill.method: {self.method!r} is not one of {', '.join(map(repr, methods))}")
        ce, kd = methods[self.method].recipe
        self.ce_weight = ce if self.ce_weight is None else self.ce_weight
        self.kd_weight = kd if self.kd_weight is None else self.kd_weight
        self._validate_temperature(methods)
        check_rules("distill", self)
        for name, section in self.sections.items():
            check_rules(f"distill.{name}", section)

    def _validate_temperature(self, methods: dict[str, DistillMethodSpec]) -> None:
        value = self.temperature
        if isinstance(value, str):
            if value not in LEARNED_TEMPERATURES:
                raise ConfigError(f"distill.temperature: {value!r} is neither a number > 0 nor a learned temperature "
                                  f"(available: {', '.join(LEARNED_TEMPERATURES) or 'none'})")
            if not methods[self.method].learned_temperature:
                takers = [name for name, spec in methods.items() if spec.learned_temperature]
                raise ConfigError(f"distill.temperature={value}: method {self.method!r} takes a fixed temperature "
                                  f"only; the methods that take a learned one: {', '.join(takers)} (or set "
                                  "distill.temperature to a number > 0)")
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ConfigError(f"distill.temperature must be > 0 (or a learned temperature: "
                              f"{', '.join(LEARNED_TEMPERATURES) or 'none'}), got {value!r}")


@dataclass
class CheckpointConfig:
    """When checkpoints are written and how many are kept (``checkpoints/`` of the run folder).

    A checkpoint is written at the end of every ``every_epochs``-th epoch and of the last one, when
    the eval accuracy improves (``best.pt``), on SIGTERM/SIGINT, and mid-epoch every
    ``every_minutes`` minutes and every ``every_steps`` steps (0 turns either off). Each holds the
    whole training state, so a run resumed from any of them ends exactly as an uninterrupted one.
    """

    every_epochs: int = setting(1, "A checkpoint at the end of every N-th epoch (and of the last).", ">= 1")
    every_minutes: float = setting(30.0, "A checkpoint mid-epoch every N minutes.", ">= 0", "0: off")
    every_steps: int = setting(0, "A checkpoint mid-epoch every N steps.", ">= 0", "0: off")
    keep_last: int = setting(2, "Checkpoints kept besides the best one.", ">= 1")


@dataclass
class TrainConfig:
    """How the loop treats numerical faults; label smoothing; the weights' moving average."""

    skip_nonfinite_steps: int = setting(
        0, "Skip (do not apply) up to this many steps whose loss is NaN or Inf, over the whole run; 0 stops the "
           "run at the first one. The limit exceeded, the run stops.", ">= 0", "0: stop at the first")
    label_smoothing: float = setting(
        0.0, "Label smoothing of the cross-entropy terms on the true labels (teacher's and student's; "
             "torch's cross_entropy(label_smoothing=)); 0: off.", "in [0, 1)")
    ema_decay: float = setting(
        0.0, "Keep an exponential moving average of the model's weights and buffers, updated after every step "
             "with this decay (torch's AveragedModel), evaluated and checkpointed beside the raw weights; 0: off.",
        "in [0, 1)")


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
    threads: int | None = setting(
        None, "CPU threads of this process (None: PyTorch's default, divided among the processes of a node).",
        ">= 1", "or null for the default")


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


DATASET_MODELS: dict[str, tuple[str, str]] = {
    name: ("digits_cnn", "digits_cnn_small") for name in ("digits", "mnist", "fashion_mnist")}
"""The (teacher, student) models of a run on these datasets when ``model`` is not set: the default
CIFAR models cannot read their images."""


@dataclass
class TeacherConfig:
    model: str = "resnet32x4"
    """A name of `intrakd models`: the zoo's, or timm/<architecture> (``pip install 'intrakd[timm]'``)."""
    weights: str | None = None
    """Local file of the model's starting weights (imagenet_* and timm/ models): a state dict, timm's,
    torchvision's or an intrakd checkpoint's (timm/ models: a classifier of another size starts new)."""
    pretrained: bool = False
    """timm/ models: start from timm's published weights, downloaded (needs a network); off by default."""
    model_input: ModelInputConfig = field(default_factory=ModelInputConfig)
    """What the model is fed (its normalisation and size); unset fields: the model's own."""
    views: int = setting(2, "Augmented views per image (the vanilla baseline may use 1 or 2; the intra loss needs 2).",
                         "1 or 2")
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
        """Raise :class:`ConfigError` naming the first setting out of its range (:func:`check_rules`)
        or two settings that do not go together."""
        check_rules("", self)
        check_rules("intra", self.intra)
        _validate_common(self.data, self.optim, self.checkpoint, self.train, self.perf)
        intra = self.intra
        if intra.delta is not None and intra.margin == "probability" and not -1 <= intra.delta < 1:
            raise ConfigError(f"intra.delta must lie in [-1, 1) for the probability margin (a margin never "
                              f"exceeds 1, so the gate would pass nothing), got {intra.delta}; "
                              "intra.delta=null turns the gate off")
        if intra.enabled and self.views != 2:
            raise ConfigError("the intra-class loss needs two views: set views=2 (or intra.weight=0)")
        if intra.enabled and self.data.mixes:
            raise ConfigError("the intra-class loss compares each image with the other images of its class, and a "
                              "mixed image (data.mixup, data.cutmix) has no single class: set data.mixup=0 and "
                              "data.cutmix=0, or intra.weight=0 (a vanilla teacher)")
        self.model_input.validate("model_input")


@dataclass
class StudentConfig:
    model: str = "resnet8x4"
    """The student: a name of `intrakd models` (see :class:`TeacherConfig`)."""
    weights: str | None = None
    """The student's starting weights (as :attr:`TeacherConfig.weights`)."""
    pretrained: bool = False
    """As :attr:`TeacherConfig.pretrained`."""
    model_input: ModelInputConfig = field(default_factory=ModelInputConfig)
    """What the student is fed (see :attr:`TeacherConfig.model_input`)."""
    teacher_input: ModelInputConfig = field(default_factory=ModelInputConfig)
    """What the teacher is fed; unset fields: what its checkpoint recorded, else the model's own."""
    teacher: str | None = None
    """Path of the teacher checkpoint (intrakd's own, or a {'model': state_dict} file)."""
    teacher_model: str | None = None
    """Architecture of the teacher, when its checkpoint does not name it."""
    teacher_outputs: str | None = None
    """A store of the teacher's outputs (``intrakd teacher-outputs``) to read its logits from instead of
    running it; it names its teacher, so ``teacher`` may be left out (given, it must be the same)."""
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
        self.model_input.validate("model_input")
        self.teacher_input.validate("teacher_input")
        _validate_common(self.data, self.optim, self.checkpoint, self.train, self.perf)
        if self.teacher_outputs and self.data.mixes:
            raise ConfigError("a store of the teacher's outputs holds its logits of unmixed views, and with data.mixup "
                              "or data.cutmix the teacher must see the mixed image: distil from the teacher itself "
                              "(drop teacher_outputs), or set data.mixup=0 and data.cutmix=0")


RUN_CONFIGS: dict[str, type[TeacherConfig | StudentConfig]] = {"teacher": TeacherConfig, "student": StudentConfig}
"""The configuration class of each run kind (the kinds of :data:`RUN_COMMANDS`)."""


def _validate_common(
    data: DataConfig, optim: OptimConfig, checkpoint: CheckpointConfig, train: TrainConfig, perf: PerfConfig
) -> None:
    """The rules of the sections both run kinds have, and the one combination among them to refuse."""
    for prefix, section in (("data", data), ("optim", optim), ("checkpoint", checkpoint), ("train", train),
                            ("perf", perf)):
        check_rules(prefix, section)
    if optim.milestones is None:  # only the epochs set: the benchmark's steps at the same fractions
        optim.milestones = scaled_milestones(optim.epochs)
    if optim.warmup_epochs >= optim.epochs:
        raise ConfigError(f"optim.warmup_epochs must be < optim.epochs ({optim.epochs}), got {optim.warmup_epochs}: "
                          "the run would never leave its warm-up")
    if optim.schedule == "step" and optim.warmup_epochs and optim.milestones \
            and optim.milestones[0] <= optim.warmup_epochs:
        raise ConfigError(f"optim.milestones must lie after the warm-up (optim.warmup_epochs={optim.warmup_epochs}), "
                          f"got {optim.milestones}")
    if optim.milestones and optim.milestones[-1] > optim.epochs:
        raise ConfigError(f"optim.milestones must be <= optim.epochs ({optim.epochs}), got {optim.milestones}: "
                          "a step after the last epoch never happens; set the milestones within the run, or "
                          "leave optim.milestones out to scale 150/180/210 of 240 to the run's epochs")
    if data.labels == "coarse" and data.dataset != "cifar100":
        raise ConfigError(f"data.labels=coarse needs cifar100's superclass labels; {data.dataset} has one "
                          "level of labels: drop data.labels")
