"""Teacher once, students many: a KD student's training steps per second reading the teacher's logits
from a store (``intrakd teacher-outputs``; ``distill teacher_outputs=STORE``) against the same Trainer
running the live teacher, and against the student alone (the same step with the teacher's logits free:
no teacher, no store), in alternating blocks of the same batches.

The bound is what a store can at most give: live step time / student-alone step time. Target: the
store's speed-up over the live teacher >= 0.9 of the bound (that is, the store's speed >= 0.9 of the
student alone's), at the precision ``perf`` picks for the device. Each ratio is the median over repeats
of the ratio within a repeat (whose blocks run back to back, live / store / alone, then the reverse),
which a machine whose load changes over minutes disturbs less than a ratio of medians. Also the store's
size per epoch (of the batches timed, and of the full 50,000-image CIFAR-100
epoch), its write speed (the teacher's forward passes included) and its read speed alone.

    PYTHONPATH=src python benchmarks/teacher_store.py --threads 1        # both pairs on the CPU
    PYTHONPATH=src python benchmarks/teacher_store.py --json out.json
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

from intrakd.config import DataConfig, DistillConfig, OptimConfig
from intrakd.data.teacher_store import (
    LOGIT_DTYPES,
    StoredBatches,
    StoreWriter,
    TeacherStore,
    view_settings,
    write_epochs,
)
from intrakd.data.tensor_data import Batch, Batches, TensorDataset, first_per_class
from intrakd.objectives import TrainSetInfo, create_distiller
from intrakd.objectives.stored_teacher import StoredTeacher
from intrakd.train.loop import RunInfo, Trainer

PAIRS = {"resnet32x4": "resnet8x4", "wrn_40_2": "wrn_16_2"}
CIFAR100_TRAIN_IMAGES = 50_000
TARGET = 0.9


class FreeLogits:
    """The live batches, each with constant teacher logits attached (the student-alone step)."""

    def __init__(self, batches: Batches, num_classes: int) -> None:
        self.batches, self.num_classes = batches, num_classes

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.batches.set_epoch(epoch, start)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for batch in self.batches:
            logits = torch.zeros(batch.labels.shape[0], self.num_classes, device=batch.labels.device)
            yield Batch(batch.views, batch.labels, batch.indices, (logits,) * len(batch.views))


def write_store(folder: Path, data: TensorDataset, data_cfg: DataConfig, teacher: torch.nn.Module,
                teacher_name: str, device: torch.device, perf) -> tuple[TeacherStore, dict]:
    """One epoch of KD views of ``data`` with the teacher's logits; returns the store and its write figures."""
    batches = data.train_batches(data_cfg.batch_size, 1, 0, device)
    with torch.no_grad(), perf.autocast():
        dtype = teacher(torch.zeros(1, *data.image_shape, device=device)).logits.dtype
    settings = {"teacher": {"path": "-", "sha256": "-", "model": teacher_name},
                **view_settings(data_cfg, data, batches),
                "precision": perf.describe()["precision"], "device": device.type,
                "logits": {"dtype": LOGIT_DTYPES[dtype][0], "top_k": None}}
    writer = StoreWriter(folder, settings)
    writer.start()

    def teacher_logits(view: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), perf.autocast():
            return teacher(view).logits

    seconds = time_block(lambda: write_epochs(writer, batches, teacher_logits, [0]), device)
    writer.finish(1)
    store = TeacherStore(folder)
    images = len(batches) * data_cfg.batch_size
    full_epoch = CIFAR100_TRAIN_IMAGES // data_cfg.batch_size * data_cfg.batch_size * writer.dtype.itemsize
    read = time_block(lambda: [store.read(0, 0, i, 1, device) for i in range(len(batches))], device)
    return store, {"bytes_per_image": writer.dtype.itemsize,
                   "store_mb_per_epoch": writer.rows * writer.dtype.itemsize / 2**20,
                   "cifar100_epoch_mb": full_epoch / 2**20, "write_images_per_s": images / seconds,
                   "write_mb_per_s": writer.rows * writer.dtype.itemsize / 2**20 / seconds,
                   "read_images_per_s": images / read}


def compare(teacher_name: str, student_name: str, data: TensorDataset, device: torch.device, batch_size: int,
            repeats: int, steps: int, warmup: int) -> dict:
    perf = perf_for(device)
    torch.manual_seed(0)
    teacher = perf.prepare_model(fed_model(teacher_name, num_classes=data.num_classes).to(device)
                                 .eval().requires_grad_(False))
    folder = Path(tempfile.mkdtemp(prefix="intrakd-store-"))
    data_cfg = DataConfig(dataset="cifar100", batch_size=batch_size)
    store, figures = write_store(folder / "store", data, data_cfg, teacher, teacher_name, device, perf)
    live_batches = data.train_batches(batch_size, 1, 0, device)
    stored = StoredTeacher()
    sources = {"live": (live_batches, teacher),
               "store": (stored.feed(StoredBatches(live_batches, store)), stored),
               "alone": (stored.feed(FreeLogits(live_batches, data.num_classes)), stored)}
    student = perf.prepare_model(fed_model(student_name, num_classes=data.num_classes).to(device))
    info = TrainSetInfo(data.num_classes, data.labels, data.image_shape)
    objective = create_distiller(DistillConfig.recipe("kd"), student, teacher, info).to(device)
    trainer = Trainer(model=student, objective=objective, train_batches=Window(live_batches, 0, warmup),
                      eval_set=data, optim=OptimConfig(), run_dir=folder / "run",
                      info=RunInfo("student", student_name, data.num_classes, {}, "-"), teacher=teacher, perf=perf)
    for name, (batches, stand_in) in sources.items():  # warm every path up on the first batches
        trainer.train_batches, trainer.teacher = Window(batches, 0, warmup), stand_in
        trainer.train_epoch(0)
    rates: dict[str, list[float]] = {name: [] for name in sources}
    for r in range(repeats):
        window = warmup + r * steps
        for name in (list(sources) if r % 2 == 0 else list(reversed(sources))):
            batches, stand_in = sources[name]
            trainer.train_batches, trainer.teacher = Window(batches, window, steps), stand_in
            rates[name].append(batch_size * steps / time_block(lambda r=r: trainer.train_epoch(r + 1), device))
    def paired(a: str, b: str) -> float:  # blocks of one repeat ran back to back: the same load on both
        return median([x / y for x, y in zip(rates[a], rates[b])])

    return {"pair": f"{teacher_name} -> {student_name}", "precision": perf.describe()["precision"],
            **{f"{name}_images_per_s": median(rates[name]) for name in sources},
            "bound": paired("alone", "live"), "speedup": paired("store", "live"), "of_bound": paired("store", "alone"),
            **figures, "samples": rates}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    parser.add_argument("--pairs", nargs="+", metavar="TEACHER:STUDENT",
                        help="default: resnet32x4:resnet8x4 wrn_40_2:wrn_16_2")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, help="timed steps per block (default: 50 on CUDA, 3 on the CPU)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default: 20 on CUDA, 1 on the CPU)")
    parser.add_argument("--data-root", help="folder with cifar-100-python")
    args = parser.parse_args(argv)
    device = setup_device(args)
    cuda = device.type == "cuda"
    steps = args.steps or (50 if cuda else 3)
    warmup = args.warmup if args.warmup is not None else (20 if cuda else 1)
    pairs = [p.split(":") for p in args.pairs] if args.pairs else list(PAIRS.items())
    data, source = cifar100_train(args.data_root)
    # the store holds one epoch of the images timed (warm-up and blocks), a few of each class
    needed = (warmup + args.repeats * steps) * args.batch_size
    data = data.subset(first_per_class(data.labels, data.num_classes, -(-needed // data.num_classes)))
    started = time.perf_counter()
    rows = [compare(t, s, data, device, args.batch_size, args.repeats, steps, warmup) for t, s in pairs]
    print(f"# Teacher store: KD student steps with the stored vs the live teacher (batch {args.batch_size})\n"
          f"machine: {machine(device)}\nsettings: {perf_for(device).describe()}\ndata: {source}, "
          f"{len(data)} images\n")
    print(table(rows, ["pair", "precision", "live_images_per_s", "store_images_per_s", "alone_images_per_s",
                       "bound", "speedup", "of_bound"]))
    print()
    print(table(rows, ["pair", "bytes_per_image", "store_mb_per_epoch", "cifar100_epoch_mb", "write_images_per_s",
                       "write_mb_per_s", "read_images_per_s"]))
    worst = min(r["of_bound"] for r in rows)
    verdict = (f"target: store speed-up >= {TARGET} of the bound (live / student alone); worst {worst:.3f} -> "
               f"{'met' if worst >= TARGET else 'NOT met'} ({time.perf_counter() - started:.0f} s)")
    print("\n" + verdict)
    write_json(args.json, {"benchmark": "teacher_store", "machine": machine(device), "data": source,
                           "batch_size": args.batch_size, "results": rows, "verdict": verdict, "met": worst >= TARGET})
    return 0


if __name__ == "__main__":
    sys.exit(main())
