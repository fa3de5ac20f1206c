"""What feeding a teacher its own normalisation is worth: timm models whose published weights expect
mean = std = 0.5 (their ``pretrained_cfg`` says so, as it does for many timm ViTs, e.g. the
``vit_*_augreg`` weights) are trained here on a CIFAR-100 subset with that normalisation (no weights
can be downloaded on this machine), saved as plain timm state dicts (the file a user brings: it records
nothing of how it was trained), and loaded back as teachers the way ``intrakd distill`` loads one. Two
small ones that train in minutes on a CPU: ``timm/mobilenetv4_conv_small_035`` (batch norm: its eval
statistics are fixed, so a shifted and rescaled input reaches every layer) and
``timm/convnext_zepto_rms`` (RMS norm after the stem: a rescaled input is largely normalised away).
Printed: each one's accuracy on the subset's test images fed

* the dataset's statistics (what every model was fed before per-model inputs: the teacher before the correction), and
* its own statistics (what it is fed now: timm's ``pretrained_cfg`` for a timm file), and
* as an intrakd checkpoint (its run recorded what it was trained with).

    PYTHONPATH=src python benchmarks/teacher_normalisation.py --threads 1      # about 10 minutes on one CPU thread
    PYTHONPATH=src python benchmarks/teacher_normalisation.py --dataset digits  # no CIFAR-100 needed
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch
from _common import add_common_args, machine, setup_device, write_json

from intrakd.config import TeacherConfig, load_config
from intrakd.data import build_datasets
from intrakd.data.cifar import resolve_cifar100_dir
from intrakd.models.checkpoint import classifier_from_checkpoint, read_checkpoint
from intrakd.runs import data_input, train_teacher
from intrakd.train.evaluate import evaluate

MODELS = ("timm/mobilenetv4_conv_small_035", "timm/convnext_zepto_rms")
HALF = "[0.5,0.5,0.5]"


def data_overrides(args: argparse.Namespace) -> list[str]:
    if args.dataset == "digits":  # grey 8 x 8 digits, upsampled once to 32 px for the ConvNeXt's stride of 32
        return ["data.dataset=digits", "data.image_size=32"]
    root = args.data_root or os.environ.get("INTRAKD_DATA_ROOT")
    for candidate in ([root] if root else []) + ["shared/data", "../shared/data", "/work/shared/data"]:
        try:
            resolve_cifar100_dir(candidate)
        except (FileNotFoundError, ValueError):
            continue
        return ["data.dataset=cifar100", f"data.root={os.path.abspath(candidate)}",
                f"data.classes=[{','.join(map(str, range(args.classes)))}]", f"data.train_per_class={args.per_class}"]
    sys.exit("CIFAR-100 not found (--data-root PATH, or --dataset digits)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    parser.add_argument("--dataset", choices=["cifar100", "digits"], default="cifar100")
    parser.add_argument("--data-root", help="folder with cifar-100-python")
    parser.add_argument("--classes", type=int, default=10, help="CIFAR-100 classes 0..N-1 (default 10)")
    parser.add_argument("--per-class", type=int, default=250, help="training images per class (default 250)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    args = parser.parse_args(argv)
    device = setup_device(args)
    data = data_overrides(args)
    rows = [row for model in args.models for row in measure(model, data, args, device)]
    print(f"# Teacher accuracy with and without its own normalisation\nmachine: {machine(device)}\n"
          f"trained {args.epochs} epochs with mean = std = 0.5 on {' '.join(data)}\n")
    print("| teacher | fed mean | fed std | test acc (%) |\n| --- | --- | --- | --- |")
    for row in rows:
        show = lambda values: ", ".join(f"{v:.4g}" for v in values)
        print(f"| {row['model']}: {row['teacher']} | {show(row['mean'])} | {show(row['std'])} | {row['test_acc']:.2f} |")
    for before, after in zip(rows[::3], rows[1::3]):
        print(f"{before['model']}: the correction restores {after['test_acc'] - before['test_acc']:+.2f} points")
    write_json(args.json, {"benchmark": "teacher_normalisation", "machine": machine(device), "data": data,
                           "epochs": args.epochs, "results": rows})
    return 0


def measure(model: str, data: list[str], args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Train ``model`` with mean = std = 0.5, then its test accuracy fed three ways (module description)."""
    channels = "[0.5]" if args.dataset == "digits" else HALF
    overrides = [*data, f"model={model}", "intra.weight=0", "views=1", "data.batch_size=64", "data.workers=0",
                 f"optim.epochs={args.epochs}", f"optim.milestones=[{args.epochs * 2 // 3}]", f"optim.lr={args.lr}",
                 "optim.weight_decay=0.0005", f"device={device}", f"model_input.mean={channels}",
                 f"model_input.std={channels}"]
    cfg = load_config(TeacherConfig, overrides=overrides)
    out = Path(tempfile.mkdtemp(prefix="intrakd-normalisation-"))
    train_teacher(cfg, out / "teacher")
    checkpoint = out / "teacher" / "checkpoints" / "last.pt"
    plain = out / "weights.pth"  # the timm file a user brings: weights only
    torch.save(read_checkpoint(checkpoint)["model"], plain)
    _, test, _ = build_datasets(cfg.data)
    own_data = data_input(test)
    dataset_stats = {"mean": list(own_data.mean), "std": list(own_data.std)}
    rows = []
    for label, path, given in (("timm file fed the dataset's statistics (before)", plain, dataset_stats),
                               ("timm file fed its own (after: timm's pretrained_cfg)", plain, None),
                               ("intrakd checkpoint fed what its run recorded", checkpoint, None)):
        teacher, _ = classifier_from_checkpoint(path, model, test.num_classes, test.image_shape, own_data, given)
        fed = teacher.model_input
        acc = evaluate(teacher.to(device), test)["acc"]
        rows.append({"model": model, "teacher": label, "mean": list(fed.mean), "std": list(fed.std),
                     "test_acc": round(acc, 2), "test_images": len(test)})
    return rows


if __name__ == "__main__":
    sys.exit(main())
