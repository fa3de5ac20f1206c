"""Shared pieces of the benchmark scripts: device and data set-up, timing, tables, JSON output."""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _markdown import table  # noqa: F401  (the scripts import it from here)

from intrakd.config import PerfConfig
from intrakd.data.cifar import CIFAR100_AUGMENTATION, load_cifar100, resolve_cifar100_dir
from intrakd.data.tensor_data import Batch, Batches, TensorDataset
from intrakd.models import Classifier, ModelInput, create_model, feed_with
from intrakd.train.accel import PerfSettings, resolve_perf

DATA_CANDIDATES = ("shared/data", "../shared/data", "/work/shared/data")


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1 ...")
    parser.add_argument("--threads", type=int, help="CPU threads (default: PyTorch's)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")


def setup_device(args: argparse.Namespace) -> torch.device:
    """The benchmark's device, with the thread count applied."""
    if args.threads:
        torch.set_num_threads(args.threads)
    name = args.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        device = torch.device("cuda", device.index if device.index is not None else torch.cuda.current_device())
        torch.cuda.set_device(device)
    return device


def perf_for(device: torch.device, **overrides: Any) -> PerfSettings:
    """intrakd's default ("auto") speed settings for ``device``, with ``overrides``, applied."""
    perf = resolve_perf(PerfConfig(**overrides), device)
    perf.apply()
    return perf


def fed_model(name: str, num_classes: int) -> Classifier:
    """``create_model(name, num_classes)`` fed as a run feeds a zoo model the CIFAR batches: their uint8
    views normalised with CIFAR-100's statistics at 32 px, on the batch tensor (a float batch as it is)."""
    aug = CIFAR100_AUGMENTATION
    return feed_with(create_model(name, num_classes=num_classes), ModelInput(aug.mean, aug.std, 32))


def cifar100_train(root: str | None) -> tuple[TensorDataset, str]:
    """The CIFAR-100 training split from ``root`` (or the usual places, or ``$INTRAKD_DATA_ROOT``),
    else 50,000 random CIFAR-shaped images with the same augmentation: throughput does not depend on
    the pixel values. Returns the data and a description of its source."""
    candidates = [root] if root else [os.environ.get("INTRAKD_DATA_ROOT"), *DATA_CANDIDATES]
    for candidate in filter(None, candidates):
        try:
            folder = resolve_cifar100_dir(candidate)
        except FileNotFoundError:
            continue
        return load_cifar100(folder)[0], f"CIFAR-100 train ({folder})"
    if root:
        resolve_cifar100_dir(root)  # raises with the reason
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (50_000, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.arange(50_000) % 100
    return TensorDataset(images, labels, 100, CIFAR100_AUGMENTATION), "synthetic CIFAR-shaped (CIFAR-100 not found)"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_block(fn: Callable[[], None], device: torch.device) -> float:
    """Wall seconds of ``fn()``, the device's queued work included."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def median(values: list[float]) -> float:
    return statistics.median(values)


def machine(device: torch.device) -> dict[str, Any]:
    """What the figures were measured on."""
    info: dict[str, Any] = {
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    return info


def write_json(path: str | None, payload: dict[str, Any]) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=2) + "\n")


class FixedBatches:
    """``steps`` copies of one batch (implements intrakd's ``Batches``): a loop with no data work."""

    def __init__(self, batch: Batch, steps: int) -> None:
        self.batch, self.steps = batch, steps

    def set_epoch(self, epoch: int) -> None:
        pass

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        return itertools.repeat(self.batch, self.steps)


class FirstBatches:
    """The first ``steps`` batches of each epoch of ``batches`` (a shortened epoch)."""

    def __init__(self, batches: Batches, steps: int) -> None:
        self.batches, self.steps = batches, steps

    def set_epoch(self, epoch: int) -> None:
        self.batches.set_epoch(epoch)

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        return itertools.islice(iter(self.batches), self.steps)


class Window:
    """Batches ``start .. start + steps - 1`` of epoch 0 of ``batches``, whatever epoch the trainer asks
    for: every source times the same images."""

    def __init__(self, batches: Batches, start: int, steps: int) -> None:
        self.batches, self.start, self.steps = batches, start, steps

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.batches.set_epoch(0, self.start)

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        for _, batch in zip(range(self.steps), self.batches):
            yield batch
