"""Speed of the training loop: intrakd's Trainer against a reference loop written the way the standard
KD repositories train, and against a bare step, on the same model, batch and data.

* reference: a Dataset that turns each CIFAR image into a PIL image and applies torchvision's
  RandomCrop(32, 4), RandomHorizontalFlip, ToTensor and Normalize; DataLoader(batch 64, shuffle,
  2 workers); float32, default memory format, PyTorch's default SGD, cudnn.benchmark on; the loss
  and top-1/top-5 accuracy read back every step as those repositories do. Distillation: the frozen teacher's
  forward under no_grad, then ``0.1 * CE + 0.9 * T^2 KL`` with T = 4.
* intrakd: ``Trainer.train_epoch`` over ``TensorBatches`` (the split held on the device, augmented
  there), with intrakd's default speed settings for the device ("auto"), and optionally compiled.
  ``teacher`` is the vanilla objective on one view (the reference's work); ``teacher-2view`` is the
  enriched teacher (two views, intra-class loss, gate, cache), whose images/s counts images, not views.
* bare: one synthetic batch already on the device, forward, backward and optimizer step only, with
  the same settings as intrakd: the ceiling of any loop.

Blocks of steps of each variant alternate; each figure is the median over repeats of the steady-state
images/s (each reference block first drains the batches its workers prepared meanwhile, untimed).
Targets: on a GPU intrakd >= 3x the reference; on the CPU intrakd > the reference and >= 0.95x bare.

    PYTHONPATH=src python benchmarks/loop_vs_reference.py                  # CPU: resnet8x4 teacher
    PYTHONPATH=src python benchmarks/loop_vs_reference.py --kd resnet32x4:resnet8x4 --compile --json out.json
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from _common import (
    FirstBatches,
    add_common_args,
    cifar100_train,
    fed_model,
    machine,
    median,
    perf_for,
    setup_device,
    table,
    time_block,
    write_json,
)
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from intrakd.config import DistillConfig, IntraConfig, OptimConfig, PerfConfig, apply_overrides, from_dict
from intrakd.data.tensor_data import TensorDataset
from intrakd.objectives import IntraClassTeacherObjective, TrainSetInfo, create_distiller
from intrakd.train.accel import PerfSettings
from intrakd.train.loop import RunInfo, Trainer
from intrakd.train.stages import build_optimizer

NUM_CLASSES = 100
REFERENCE_WORKERS = 2


# ---------------------------------------------------------------- the reference loop
class PILCifar(Dataset):
    """CIFAR images decoded to PIL one at a time, as ``torchvision.datasets.CIFAR100`` serves them."""

    def __init__(self, data: TensorDataset) -> None:
        self.images = data.images.permute(0, 2, 3, 1).numpy()  # N x H x W x C, as torchvision keeps it
        self.labels = data.labels.tolist()
        mean, std = data.augmentation.mean, data.augmentation.std
        self.transform = transforms.Compose([
            transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
            transforms.ToTensor(), transforms.Normalize(mean, std),
        ])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(np.ascontiguousarray(self.images[index]))), self.labels[index]


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[float]:
    """Top-k accuracies (percent) read back to the host, as the reference repositories log each step."""
    top = logits.topk(max(ks), dim=1).indices
    hits = top == labels[:, None]
    return [100.0 * hits[:, :k].any(dim=1).float().mean().item() for k in ks]


class ReferenceLoop:
    """The standard repositories' loop: PIL pipeline, DataLoader workers, fp32, per-step read-backs."""

    def __init__(self, data: TensorDataset, device: torch.device, student: nn.Module,
                 teacher: nn.Module | None, batch_size: int) -> None:
        self.device, self.student, self.teacher = device, student, teacher
        torch.backends.cudnn.benchmark = True  # those repositories set it too
        loader = DataLoader(PILCifar(data), batch_size=batch_size, shuffle=True, num_workers=REFERENCE_WORKERS,
                            drop_last=True, persistent_workers=True)
        self.batches = itertools.chain.from_iterable(itertools.repeat(loader))
        self.optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        self.losses: list[float] = []

    def step(self) -> None:
        images, labels = next(self.batches)
        images, labels = images.to(self.device), labels.to(self.device)
        self.student.train()
        logits = self.student(images).logits
        loss = F.cross_entropy(logits, labels)
        if self.teacher is not None:
            with torch.no_grad():
                teacher_logits = self.teacher(images).logits
            t = 4.0
            kl = F.kl_div(F.log_softmax(logits / t, dim=1), F.softmax(teacher_logits / t, dim=1),
                          reduction="batchmean") * t * t
            loss = 0.1 * loss + 0.9 * kl
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.losses.append(loss.item())
        topk_correct(logits, labels)

    def run(self, steps: int) -> None:
        for _ in range(steps):
            self.step()


# ---------------------------------------------------------------- intrakd
class IntrakdLoop:
    """intrakd's Trainer on shortened epochs of the device-resident data."""

    def __init__(self, data: TensorDataset, device: torch.device, perf: PerfSettings, student: nn.Module,
                 teacher: nn.Module | None, batch_size: int, objective: nn.Module, name: str) -> None:
        batches = data.train_batches(batch_size, objective.num_views, 0, device)
        self.source, self.epoch = batches, 0
        self.trainer = Trainer(
            model=student, objective=objective.to(device), train_batches=FirstBatches(batches, 1), eval_set=data,
            optim=OptimConfig(), run_dir=Path(tempfile.mkdtemp(prefix="intrakd-loop-")),
            info=RunInfo("student" if teacher is not None else "teacher", name, NUM_CLASSES, {}, "-"),
            teacher=teacher, perf=perf,
        )

    def run(self, steps: int) -> None:
        self.trainer.train_batches = FirstBatches(self.source, steps)
        self.epoch += 1
        self.trainer.train_epoch(self.epoch)


class BareLoop:
    """Forward, backward and step on one synthetic batch already on the device."""

    def __init__(self, device: torch.device, perf: PerfSettings, student: nn.Module, teacher: nn.Module | None,
                 batch_size: int) -> None:
        self.perf, self.student, self.teacher = perf, student, teacher
        generator = torch.Generator(device=device).manual_seed(0)
        self.images = torch.randn(batch_size, 3, 32, 32, device=device, generator=generator)
        self.labels = torch.randint(0, NUM_CLASSES, (batch_size,), device=device, generator=generator)
        self.optimizer = build_optimizer(student.parameters(), OptimConfig(), **perf.optimizer_options())

    def run(self, steps: int) -> None:
        self.student.train()
        for _ in range(steps):
            with self.perf.autocast():
                logits = self.student(self.images).logits
                loss = F.cross_entropy(logits.float(), self.labels)
                if self.teacher is not None:
                    with torch.no_grad():
                        teacher_logits = self.teacher(self.images).logits
                    t = 4.0
                    kl = F.kl_div(F.log_softmax(logits.float() / t, dim=1),
                                  F.log_softmax(teacher_logits.float() / t, dim=1),
                                  reduction="batchmean", log_target=True) * t * t
                    loss = 0.1 * loss + 0.9 * kl
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()


# ---------------------------------------------------------------- measurement
def build_models(student_name: str, teacher_name: str | None, device: torch.device, perf: PerfSettings | None):
    torch.manual_seed(0)
    student = fed_model(student_name, num_classes=NUM_CLASSES).to(device)
    teacher = None
    if teacher_name:
        teacher = fed_model(teacher_name, num_classes=NUM_CLASSES).to(device).eval().requires_grad_(False)
    if perf is not None:
        student = perf.prepare_model(student)
        teacher = perf.prepare_model(teacher) if teacher is not None else None
    return student, teacher


def compare(task: str, student_name: str, teacher_name: str | None, data: TensorDataset, device: torch.device,
            batch_size: int, repeats: int, steps: int, warmup: int, compile_too: bool,
            overrides: dict[str, Any]) -> list[dict]:
    """Images/s of every variant for one task (``teacher`` or ``kd``)."""
    loops = {}
    student, teacher = build_models(student_name, teacher_name, device, None)
    loops["reference"] = (ReferenceLoop(data, device, student, teacher, batch_size), "PIL + DataLoader(2), fp32")
    settings = [("", perf_for(device, **overrides))]
    settings += [(" compiled", perf_for(device, **{**overrides, "compile": True}))] if compile_too else []
    for suffix, perf in settings:
        student, teacher = build_models(student_name, teacher_name, device, perf)
        if task == "teacher":
            objective = IntraClassTeacherObjective(IntraConfig(weight=0.0), NUM_CLASSES, student.embedding_dim, 1)
        else:
            info = TrainSetInfo(NUM_CLASSES, torch.zeros(0, dtype=torch.long), (3, 32, 32))
            objective = create_distiller(DistillConfig.recipe("kd"), student, teacher, info)
        loops["intrakd" + suffix] = (IntrakdLoop(data, device, perf, student, teacher, batch_size, objective,
                                                 student_name), _describe(perf))
        if perf.compile:
            continue
        student, teacher = build_models(student_name, teacher_name, device, perf)
        loops["bare"] = (BareLoop(device, perf, student, teacher, batch_size), _describe(perf))
        if task == "teacher":
            student, _ = build_models(student_name, None, device, perf)
            enriched = IntraClassTeacherObjective(IntraConfig(), NUM_CLASSES, student.embedding_dim, 2)
            loops["intrakd teacher-2view"] = (IntrakdLoop(data, device, perf, student, None, batch_size, enriched,
                                                          student_name), _describe(perf))
    images: dict[str, list[float]] = {name: [] for name in loops}
    for loop, _ in loops.values():
        loop.run(warmup)
    for r in range(repeats):
        names = list(loops) if r % 2 == 0 else list(reversed(loops))
        for name in names:
            loop = loops[name][0]
            if name == "reference":
                loop.run(REFERENCE_WORKERS * 2)  # drain what the workers prepared while other variants ran
            images[name].append(batch_size * steps / time_block(lambda: loop.run(steps), device))
    model = student_name if teacher_name is None else f"{teacher_name} -> {student_name}"
    reference, bare = median(images["reference"]), median(images["bare"])
    rows = []
    for name, (_, how) in loops.items():
        value = median(images[name])
        rows.append({
            "task": task, "model": model, "loop": name, "settings": how, "images_per_s": value,
            "vs_reference": value / reference, "vs_bare": value / bare if name == "intrakd" else None,
            "samples": images[name],
        })
    return rows


def _describe(perf: PerfSettings) -> str:
    d = perf.describe()
    parts = [d["precision"], "channels_last" if d["channels_last"] else "NCHW",
             "fused SGD" if d["fused_optimizer"] else "default SGD"]
    if d["compile"]:
        parts.append(f"compile={d['compile']}")
    return ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    parser.add_argument("--teacher-models", nargs="*", help="teacher training on these (default: resnet32x4 "
                        "on CUDA, resnet8x4 on the CPU)")
    parser.add_argument("--kd", nargs="*", metavar="TEACHER:STUDENT",
                        help="distillation pairs (default: resnet32x4:resnet8x4 on CUDA, none on the CPU)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, help="timed steps per block (default: 100 on CUDA, 8 on the CPU)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default: 30 on CUDA, 2 on the CPU)")
    parser.add_argument("--compile", action="store_true", help="also measure intrakd compiled")
    parser.add_argument("--perf", nargs="*", default=[], metavar="KEY=VALUE",
                        help="intrakd's speed settings instead of 'auto', e.g. precision=fp32 channels_last=false")
    parser.add_argument("--data-root", help="folder with cifar-100-python")
    args = parser.parse_args(argv)
    device = setup_device(args)
    cuda = device.type == "cuda"
    teachers = args.teacher_models if args.teacher_models is not None else (["resnet32x4"] if cuda else ["resnet8x4"])
    pairs = args.kd if args.kd is not None else (["resnet32x4:resnet8x4"] if cuda else [])
    steps = args.steps or (100 if cuda else 8)
    warmup = args.warmup if args.warmup is not None else (30 if cuda else 2)
    overrides = apply_overrides({}, args.perf)
    from_dict(PerfConfig, overrides, prefix="perf.")  # rejects unknown keys and wrong types
    data, source = cifar100_train(args.data_root)
    tasks = [("teacher", name, None) for name in teachers]
    tasks += [("kd", pair.partition(":")[2], pair.partition(":")[0]) for pair in pairs]
    print(f"# Training loop: intrakd vs the reference loop vs a bare step (batch {args.batch_size})\n"
          f"machine: {machine(device)}\ndata: {source}\n")
    rows: list[dict] = []
    for task, student_name, teacher_name in tasks:  # results printed and saved after each task
        new = compare(task, student_name, teacher_name, data, device, args.batch_size, args.repeats, steps, warmup,
                      args.compile, overrides)
        print(table(new, ["task", "model", "loop", "settings", "images_per_s", "vs_reference", "vs_bare"]) + "\n")
        rows += new
        verdicts = _verdicts(rows, cuda)
        write_json(args.json, {"benchmark": "loop_vs_reference", "machine": machine(device), "data": source,
                               "batch_size": args.batch_size, "steps_per_block": steps, "repeats": args.repeats,
                               "results": rows, "verdicts": verdicts})
    print("\n".join(_verdicts(rows, cuda)))
    return 0


def _verdicts(rows: list[dict], cuda: bool) -> list[str]:
    lines = []
    for (task, model), group in itertools.groupby(rows, key=lambda r: (r["task"], r["model"])):
        group = {r["loop"]: r for r in group}
        best = max((r for name, r in group.items() if name in ("intrakd", "intrakd compiled")),
                   key=lambda r: r["images_per_s"])
        if cuda:
            ok = best["vs_reference"] >= 3.0
            lines.append(f"{task} {model}: best intrakd ({best['loop']}) {best['vs_reference']:.2f}x the reference "
                         f"(target >= 3x): {'met' if ok else 'NOT met'}")
        else:
            plain = group["intrakd"]
            ok = plain["vs_reference"] > 1.0 and plain["vs_bare"] >= 0.95
            lines.append(f"{task} {model}: intrakd {plain['vs_reference']:.2f}x the reference (target > 1) and "
                         f"{plain['vs_bare']:.3f}x the bare step (target >= 0.95): {'met' if ok else 'NOT met'}")
    return lines


if __name__ == "__main__":
    sys.exit(main())
