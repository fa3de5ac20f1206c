"""Named recipes of the standard KD benchmarks: a teacher recipe and a KD recipe per teacher/student pair.

A preset is a plain nested dict of configuration values (the shape of the YAML files), used as the
base that ``--config`` and ``key=value`` overrides apply on top of:
``intrakd train-teacher --preset cifar100/resnet32x4-resnet8x4/teacher`` then
``intrakd distill --preset cifar100/resnet32x4-resnet8x4/kd --teacher CHECKPOINT``. Teacher presets
train the enriched teacher of METHOD.md (``--vanilla`` for cross-entropy only); KD presets name the
teacher's architecture and leave its checkpoint to ``--teacher``.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import Any, Literal

from intrakd.config import RUN_COMMANDS, ConfigError, StudentConfig, TeacherConfig, load_config
from intrakd.objectives import (
    distill_recipe,
    learned_temperature_methods,
    learned_temperature_recipe,
    list_distillers,
    list_temperatures,
    logit_standardized_methods,
    methods_for_pair,
    pair_optim,
    published_top1,
    reference_of,
)

Kind = Literal["teacher", "distill"]


@dataclass(frozen=True)
class Published:
    """Top-1 (%) reported for a pair by the standard benchmark (METHOD.md)."""

    teacher: float
    student: float
    kd: float

    def __str__(self) -> str:
        return f"{self.teacher:.2f} / {self.student:.2f} / {self.kd:.2f}"


@dataclass(frozen=True)
class Preset:
    name: str
    kind: Kind
    values: dict[str, Any]
    description: str
    published: Published | None = None
    method_published: float | None = None
    """CIFAR-100 top-1 (%) that the paper of the preset's method reports for its pair (the method with
    the standard teacher); None where it reports none."""
    reference: str | None = None
    """The reference code the preset's distillation recipe follows (its method's ``REFERENCE``)."""
    teacher_preset: str | None = None
    """The teacher preset whose run folder holds this student preset's teacher checkpoint."""

    def config(self) -> TeacherConfig | StudentConfig:
        """The configuration this preset resolves to (validated)."""
        return load_config(TeacherConfig if self.kind == "teacher" else StudentConfig, base=self.values)


# CIFAR-100 (METHOD.md): SGD 0.9, wd 5e-4, batch 64, 240 epochs, lr 0.05 (0.01 for MobileNetV2 and
# ShuffleNet students), x0.1 at 150/180/210 (optim.milestones left out: the default, which scales when a
# user changes the epochs); KD T = 4, CE 0.1, KD 0.9.
CIFAR100_OPTIM = {"epochs": 240, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "lr_decay": 0.1}
CIFAR100_DATA = {"dataset": "cifar100", "batch_size": 64}
CIFAR100_KD = {"method": "kd", "temperature": 4.0, "ce_weight": 0.1, "kd_weight": 0.9}
LIGHTWEIGHT_STUDENT_LR = 0.01
LIGHTWEIGHT_STUDENTS = ("MobileNetV2", "ShuffleV1", "ShuffleV2")
CIFAR100_PAIRS: tuple[tuple[str, str, Published | None], ...] = (
    ("resnet56", "resnet20", Published(72.34, 69.06, 70.66)),
    ("resnet110", "resnet32", None),
    ("resnet32x4", "resnet8x4", Published(79.42, 72.50, 73.33)),
    ("wrn_40_2", "wrn_16_2", Published(75.61, 73.26, 74.92)),
    ("wrn_40_2", "wrn_40_1", None),
    ("vgg13", "vgg8", Published(74.64, 70.36, 72.98)),
    ("vgg13", "MobileNetV2", None),
    ("ResNet50", "MobileNetV2", None),
    ("resnet32x4", "ShuffleV1", None),
    ("resnet32x4", "ShuffleV2", None),
    ("wrn_40_2", "ShuffleV1", None),
)

# Tiny ImageNet: the recipe of mdistiller's Tiny ImageNet configs (configs/tiny_imagenet/, the DOT
# paper, Zhao et al., ICCV 2023: ResNet18 -> MobileNetV2 / ShuffleV2 with the CIFAR-style models at
# 64x64): SGD 0.9, wd 5e-4, batch 256, 200 epochs, lr 0.2, x0.1 at 60/120/160; KD T = 4, CE 0.1,
# KD 0.9. Augmentation crop 64 pad 8 + flip; the 1.2 GB of images are held in memory.
TINY_IMAGENET_OPTIM = {"epochs": 200, "lr": 0.2, "momentum": 0.9, "weight_decay": 5e-4,
                       "milestones": [60, 120, 160], "lr_decay": 0.1}
TINY_IMAGENET_DATA = {"dataset": "tiny_imagenet", "batch_size": 256, "in_memory": True}
TINY_IMAGENET_PAIRS = (("ResNet18", "MobileNetV2"), ("ResNet18", "ShuffleV2"))

# ImageNet: the torchvision / CRD recipe: SGD 0.9, wd 1e-4, batch 256, 100 epochs, lr 0.1, x0.1 at
# 30/60/90; RandomResizedCrop 224 + flip; KD T = 1, CE 0.5, KD 0.5 (METHOD.md).
IMAGENET_OPTIM = {"epochs": 100, "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4,
                  "milestones": [30, 60, 90], "lr_decay": 0.1}
IMAGENET_DATA = {"dataset": "imagenet", "batch_size": 256, "image_size": 224}
IMAGENET_KD = {"method": "kd", "temperature": 1.0, "ce_weight": 0.5, "kd_weight": 0.5}
IMAGENET_PAIRS = (("resnet34-resnet18", "imagenet_resnet34", "imagenet_resnet18"),
                  ("resnet50-mobilenetv1", "imagenet_resnet50", "imagenet_mobilenet_v1"))

ENRICHED_TEACHER = {"weight": 0.02, "temperature": 0.1, "delta": 0.5}
VANILLA_TEACHER = {"weight": 0.0}
"""Cross-entropy only, on the same two views as the enriched teacher (the comparison isolates the loss)."""
RUNS_ROOT = "runs"
"""Preset runs default to ``runs/<preset name>``, so a method preset finds its teacher's checkpoint."""


def default_run_dir(preset_name: str) -> str:
    """Where a run of ``preset_name`` goes when no ``--out`` is given."""
    return f"{RUNS_ROOT}/{preset_name}"


def _teacher(model: str, data: dict[str, Any], optim: dict[str, Any], intra: dict[str, Any]) -> dict[str, Any]:
    return {"model": model, "views": 2, "data": dict(data), "optim": dict(optim), "intra": dict(intra)}


def _kd(student: str, teacher: str, data: dict[str, Any], optim: dict[str, Any], kd: dict[str, Any]) -> dict[str, Any]:
    return {"model": student, "teacher_model": teacher, "data": dict(data), "optim": dict(optim), "distill": dict(kd)}


def _build() -> dict[str, Preset]:
    presets: list[Preset] = []

    def pair(prefix: str, label: str, teacher: str, student: str, data: dict[str, Any], teacher_optim: dict[str, Any],
             student_optim: dict[str, Any], kd: dict[str, Any], published: Published | None) -> None:
        base = f"{prefix}/{label}"
        presets.append(Preset(f"{base}/teacher", "teacher", _teacher(teacher, data, teacher_optim, ENRICHED_TEACHER),
                              f"{prefix} teacher {teacher} (enriched) for {student}", published))
        presets.append(Preset(f"{base}/teacher-vanilla", "teacher",
                              _teacher(teacher, data, teacher_optim, VANILLA_TEACHER),
                              f"{prefix} teacher {teacher} (vanilla: cross-entropy, same two views)", published))
        presets.append(Preset(f"{base}/kd", "distill", _kd(student, teacher, data, student_optim, kd),
                              f"{prefix} KD {teacher} -> {student}", published,
                              published.kd if published else None, reference_of("kd").reference))
        if prefix != "cifar100":
            return
        # every distillation method that accepts the pair (and its logit-standardised recipe, where it
        # has one; and with each learned temperature, for the methods that take one) with either
        # teacher: only the teacher checkpoint differs
        accepted = methods_for_pair(teacher, student)
        recipes = [(method, method.upper(), distill_recipe(method, teacher, student),
                    published.kd if method == "kd" and published else published_top1(method, teacher, student),
                    pair_optim(method, teacher, student))
                   for method in list_distillers() if method in accepted]
        recipes += [(f"{method}-ls", f"{method.upper()} with logit standardisation",
                     distill_recipe(method, teacher, student, logit_standardize=True),
                     published_top1(method, teacher, student, logit_standardize=True),
                     pair_optim(method, teacher, student, logit_standardize=True))
                    for method in logit_standardized_methods() if method in accepted]
        recipes += [(f"{method}-{temperature}", f"{method.upper()} with the {temperature.upper()} temperature",
                     learned_temperature_recipe(temperature, method, teacher, student),
                     published_top1(method, teacher, student, temperature), pair_optim(method, teacher, student))
                    for temperature in list_temperatures() for method in learned_temperature_methods()
                    if method in accepted]
        for name, title, recipe, method_published, optim in recipes:
            for variant, teacher_preset in (("vanilla", f"{base}/teacher-vanilla"), ("enriched", f"{base}/teacher")):
                values = _kd(student, teacher, data, {**student_optim, **optim}, recipe)
                values["teacher"] = f"{default_run_dir(teacher_preset)}/checkpoints/best.pt"
                presets.append(Preset(f"{base}/{name}-{variant}", "distill", values,
                                      f"{prefix} {title} {teacher} -> {student}, {variant} teacher "
                                      f"(trained by --preset {teacher_preset})", published, method_published,
                                      reference_of(recipe["method"]).reference, teacher_preset))

    for teacher, student, published in CIFAR100_PAIRS:
        student_optim = dict(CIFAR100_OPTIM)
        if student in LIGHTWEIGHT_STUDENTS:
            student_optim["lr"] = LIGHTWEIGHT_STUDENT_LR
        pair("cifar100", f"{teacher}-{student}", teacher, student, CIFAR100_DATA, CIFAR100_OPTIM, student_optim,
             CIFAR100_KD, published)
    for teacher, student in TINY_IMAGENET_PAIRS:
        pair("tiny_imagenet", f"{teacher}-{student}", teacher, student, TINY_IMAGENET_DATA, TINY_IMAGENET_OPTIM,
             TINY_IMAGENET_OPTIM, CIFAR100_KD, None)
    for label, teacher, student in IMAGENET_PAIRS:
        pair("imagenet", label, teacher, student, IMAGENET_DATA, IMAGENET_OPTIM, IMAGENET_OPTIM, IMAGENET_KD, None)
    return {p.name: p for p in presets}


@functools.cache
def all_presets() -> dict[str, Preset]:
    """Every preset by name (built on first use: which methods accept a pair is found by building
    its models on the meta device)."""
    return _build()


def list_presets(kind: Kind | None = None) -> list[Preset]:
    """All presets (of one kind), in registry order."""
    return [p for p in all_presets().values() if kind is None or p.kind == kind]


def get_preset(name: str, kind: Kind | None = None) -> Preset:
    """The preset called ``name``; with ``kind``, it must be of that kind."""
    if name not in all_presets():
        raise ConfigError(f"unknown preset {name!r}; `intrakd presets` lists them, e.g. "
                         f"{', '.join(p.name for p in list_presets(kind)[:2])}")
    preset = all_presets()[name]
    if kind is not None and preset.kind != kind:
        command = RUN_COMMANDS["teacher" if preset.kind == "teacher" else "student"]
        raise ConfigError(f"preset {name!r} is a {preset.kind} recipe: use it with `intrakd {command} --preset {name}`")
    return preset


def preset_values(name: str, kind: Kind) -> dict[str, Any]:
    """A copy of the configuration values of preset ``name`` (which must be of ``kind``)."""
    return copy.deepcopy(get_preset(name, kind).values)


def presets_table() -> str:
    """One line per preset with its key settings and, for the CIFAR pairs that have them, the
    published teacher / student top-1, the top-1 the paper of the preset's method reports for the pair,
    and the reference code its recipe follows."""
    header = ("NAME", "KIND", "MODEL", "TEACHER", "EPOCHS", "BATCH", "LR", "T / CE / KD", "PUBLISHED T / S",
              "PUBLISHED", "REFERENCE")
    rows = [header]
    for p in all_presets().values():
        v = p.values
        kd = v.get("distill")
        init_epochs = kd.get(kd["method"], {}).get("init_epochs", 0) if kd else 0  # a pre-training stage
        epochs = f"{init_epochs}+{v['optim']['epochs']}" if init_epochs else str(v["optim"]["epochs"])
        rows.append((
            p.name, p.kind, v["model"], v.get("teacher_model", "-"), epochs,
            str(v["data"]["batch_size"]), f"{v['optim']['lr']:g}",
            f"{_number(kd['temperature'])} / {kd['ce_weight']:g} / {kd['kd_weight']:g}" if kd else "-",
            f"{p.published.teacher:.2f} / {p.published.student:.2f}" if p.published else "n/a",
            f"{p.method_published:.2f}" if p.method_published is not None else "n/a",
            p.reference or "-",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def _number(value: float | str) -> str:
    """A setting that is a number or a name (``distill.temperature``: 4, or ``ctkd``)."""
    return value if isinstance(value, str) else f"{value:g}"
