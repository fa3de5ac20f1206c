"""The teacher's share of a KD student's training step, before and after the teacher's forward pass kept
no autograd state: the same Trainer step with the teacher run under ``no_grad`` (before: how every
method ran it) and under ``inference_mode`` (after: what a method that declares
``Distiller.teacher_in_graph = False`` gets, KD among them), against the student alone (the same step with
the teacher's logits given: no teacher), in alternating blocks of the same batches, at the speed
settings ``perf`` picks for the device (bf16 autocast and channels-last where it computes in bf16
natively); ``--compile`` measures the compiled step (teacher included) as well.

The teacher's share is 1 - (images/s with the teacher) / (images/s of the student alone), taken within
each repeat (whose blocks run back to back: before / after / alone, then the reverse) and the median
over repeats; "after / before" likewise. Also the teacher's forward pass alone, in milliseconds per
batch, in both modes. A step's numbers do not depend on the mode (tests/test_distillers.py).

    PYTHONPATH=src python benchmarks/teacher_cost.py --threads 1        # both pairs on the CPU
    PYTHONPATH=src python benchmarks/teacher_cost.py --compile --json out.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import (
    Window,
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

from intrakd.config import DistillConfig, OptimConfig
from intrakd.data.tensor_data import TensorDataset, first_per_class
from intrakd.models import ModelOutput
from intrakd.objectives import TrainSetInfo, create_distiller
from intrakd.train.accel import PerfSettings
from intrakd.train.loop import RunInfo, Trainer

PAIRS = {"resnet32x4": "resnet8x4", "wrn_40_2": "wrn_16_2"}
MODES = {"before": torch.no_grad, "after": torch.inference_mode}
"""The teacher's autograd mode in each variant of the step."""


class NoTeacher(torch.nn.Module):
    """Stands in for the teacher at no cost: constant logits for any images (the student-alone step)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, images: torch.Tensor) -> ModelOutput:
        return ModelOutput(images.new_zeros(images.shape[0], self.num_classes), None, ())


def teacher_forward_ms(teacher: torch.nn.Module, images: torch.Tensor, perf: PerfSettings, device: torch.device,
                       repeats: int, steps: int) -> dict[str, float]:
    """Milliseconds per batch of the teacher's forward pass alone under each of :data:`MODES` (median over
    ``repeats`` alternating blocks of ``steps`` passes, after one untimed block each)."""
    def block(mode: str) -> float:
        def run() -> None:
            for _ in range(steps):
                with MODES[mode](), perf.autocast():
                    teacher(images)
        return time_block(run, device) / steps * 1000

    for mode in MODES:
        block(mode)
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    for r in range(repeats):
        for mode in (list(MODES) if r % 2 == 0 else list(reversed(MODES))):
            times[mode].append(block(mode))
    return {f"teacher_ms_{mode}": median(values) for mode, values in times.items()}


def compare(teacher_name: str, student_name: str, data: TensorDataset, device: torch.device, perf: PerfSettings,
            batch_size: int, repeats: int, steps: int, warmup: int) -> dict:
    torch.manual_seed(0)
    teacher = perf.prepare_model(fed_model(teacher_name, num_classes=data.num_classes).to(device)
                                 .eval().requires_grad_(False))
    student = perf.prepare_model(fed_model(student_name, num_classes=data.num_classes).to(device))
    info = TrainSetInfo(data.num_classes, data.labels, data.image_shape)
    objective = create_distiller(DistillConfig.recipe("kd"), student, teacher, info).to(device)
    live = data.train_batches(batch_size, 1, 0, device)
    sources = {"before": (live, teacher, True), "after": (live, teacher, False),
               "alone": (live, NoTeacher(data.num_classes).to(device), False)}
    trainer = Trainer(model=student, objective=objective, train_batches=Window(live, 0, warmup), eval_set=data,
                      optim=OptimConfig(), run_dir=Path(tempfile.mkdtemp(prefix="intrakd-teacher-cost-")),
                      info=RunInfo("student", student_name, data.num_classes, {}, "-"), teacher=teacher, perf=perf)

    def use(name: str, start: int, count: int) -> None:
        batches, stand_in, in_graph = sources[name]
        trainer.train_batches, trainer.teacher = Window(batches, start, count), stand_in
        objective.teacher_in_graph = in_graph  # before: the teacher under no_grad, as a method that keeps its tensors

    for name in sources:  # warm every path up on the first batches (and compile it, when asked)
        use(name, 0, warmup)
        trainer.train_epoch(0)
    rates: dict[str, list[float]] = {name: [] for name in sources}
    for r in range(repeats):
        for name in (list(sources) if r % 2 == 0 else list(reversed(sources))):
            use(name, warmup + r * steps, steps)
            rates[name].append(batch_size * steps / time_block(lambda r=r: trainer.train_epoch(r + 1), device))

    def paired(ratio) -> float:  # blocks of one repeat ran back to back: the same load on all
        return median([ratio(*rs) for rs in zip(rates["before"], rates["after"], rates["alone"])])

    images = next(iter(Window(live, 0, 1))).views[0]
    return {"pair": f"{teacher_name} -> {student_name}", "precision": perf.describe()["precision"],
            "channels_last": perf.channels_last, "compile": perf.describe()["compile"],
            **{f"{name}_images_per_s": median(rates[name]) for name in sources},
            "teacher_share_before": paired(lambda before, after, alone: 1 - before / alone),
            "teacher_share_after": paired(lambda before, after, alone: 1 - after / alone),
            "after_vs_before": paired(lambda before, after, alone: after / before),
            **teacher_forward_ms(teacher, images, perf, device, repeats, steps), "samples": rates}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    parser.add_argument("--pairs", nargs="+", metavar="TEACHER:STUDENT",
                        help="default: resnet32x4:resnet8x4 wrn_40_2:wrn_16_2")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, help="timed steps per block (default: 50 on CUDA, 3 on the CPU)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default: 20 on CUDA, 1 on the CPU)")
    parser.add_argument("--compile", action="store_true", help="also measure the compiled step (perf.compile=true)")
    parser.add_argument("--data-root", help="folder with cifar-100-python")
    args = parser.parse_args(argv)
    device = setup_device(args)
    cuda = device.type == "cuda"
    steps = args.steps or (50 if cuda else 3)
    warmup = args.warmup if args.warmup is not None else (20 if cuda else 1)
    pairs = [p.split(":") for p in args.pairs] if args.pairs else list(PAIRS.items())
    data, source = cifar100_train(args.data_root)
    needed = (warmup + args.repeats * steps) * args.batch_size  # the images timed, a few of each class
    data = data.subset(first_per_class(data.labels, data.num_classes, -(-needed // data.num_classes)))
    started = time.perf_counter()
    settings = [perf_for(device)] + ([perf_for(device, compile=True)] if args.compile else [])
    rows = [compare(t, s, data, device, perf, args.batch_size, args.repeats, steps, warmup)
            for perf in settings for t, s in pairs]
    print(f"# Teacher cost: the teacher's share of a KD step, its forward under no_grad (before) vs "
          f"inference_mode (after) (batch {args.batch_size})\nmachine: {machine(device)}\n"
          f"settings: {settings[0].describe()}\ndata: {source}, {len(data)} images\n")
    print(table(rows, ["pair", "precision", "channels_last", "compile", "before_images_per_s", "after_images_per_s",
                       "alone_images_per_s", "teacher_share_before", "teacher_share_after", "after_vs_before",
                       "teacher_ms_before", "teacher_ms_after"]))
    print(f"\n({time.perf_counter() - started:.0f} s)")
    write_json(args.json, {"benchmark": "teacher_cost", "machine": machine(device), "data": source,
                           "batch_size": args.batch_size, "results": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
