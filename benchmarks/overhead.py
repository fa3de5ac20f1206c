"""Cost of the method: a teacher training step with the intra-class loss, margin gate and feature
cache, against the same step without them (cross-entropy over the same two views, same model, same
batch). Both run through intrakd's Trainer; blocks of steps alternate, the median ratio is reported.

Also timed in isolation: the method's own part (loss, gate and cache, forward and backward) on
embeddings and logits of the step's shape, and the ratio it implies; and counted: the ATen
operations that part dispatches per step (views excluded), which in eager mode on a GPU is the number
of kernel launches it adds, the cost that dominates at small batches. Target: ratio <= 1.05.

    PYTHONPATH=src python benchmarks/overhead.py                      # resnet8x4 on the CPU, resnet32x4 on CUDA
    PYTHONPATH=src python benchmarks/overhead.py --models resnet32x4 --batch-sizes 64 256 --json out.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import (
    FixedBatches,
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
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from intrakd.config import IntraConfig, OptimConfig
from intrakd.data.tensor_data import TensorBatches
from intrakd.models import ModelOutput
from intrakd.objectives import IntraClassTeacherObjective
from intrakd.train.accel import PerfSettings
from intrakd.train.loop import RunInfo, Trainer

NUM_CLASSES = 100


class FixedOutput(nn.Module):
    """Stands in for the model: returns given logits and embeddings (leaves with gradient)."""

    def __init__(self, logits: torch.Tensor, embedding: torch.Tensor) -> None:
        super().__init__()
        self.logits, self.embedding = nn.Parameter(logits), nn.Parameter(embedding)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        return ModelOutput(self.logits, self.embedding, ())


def fill_cache(objective: IntraClassTeacherObjective, device: torch.device) -> None:
    """Fill every slot of the objective's cache, as late in training (the cost does not depend on it)."""
    cache = objective.cache
    rows = F.normalize(torch.randn(cache.num_classes * cache.capacity, cache.dim, device=device), dim=1)
    cache.write(rows, torch.arange(cache.num_classes, device=device).repeat_interleave(cache.capacity))


class OpCounter(TorchDispatchMode):
    """Counts the ATen operations dispatched while active, views (which launch nothing) excluded."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += not func.is_view
        return func(*args, **(kwargs or {}))


def operations_per_step(objective: nn.Module, stub: nn.Module, batch, perf: PerfSettings) -> int:
    """ATen operations of one step of ``objective`` on ``stub``: forward, backward and its statistics."""
    with OpCounter() as counter:
        with perf.autocast():
            result = objective(stub, batch)
        sum(result.losses.values()).backward()
        _ = [value.detach() for value in result.stats.values()]
    return counter.count


def measure(model_name: str, batch_size: int, device: torch.device, perf: PerfSettings, data, repeats: int,
            steps: int, warmup: int) -> dict:
    torch.manual_seed(0)
    model = perf.prepare_model(fed_model(model_name, num_classes=NUM_CLASSES).to(device))
    dim = model.embedding_dim
    objectives = {
        "vanilla": IntraClassTeacherObjective(IntraConfig(weight=0.0), NUM_CLASSES, dim, views=2).to(device),
        "enriched": IntraClassTeacherObjective(IntraConfig(), NUM_CLASSES, dim, views=2).to(device),
    }
    fill_cache(objectives["enriched"], device)
    source = TensorBatches(data.to(device), batch_size, views=2, seed=0)
    batch = next(iter(source))  # the same two augmented views for both
    run_dir = Path(tempfile.mkdtemp(prefix="intrakd-overhead-"))
    trainers = {
        name: Trainer(model=model, objective=objective, train_batches=FixedBatches(batch, steps), eval_set=data,
                      optim=OptimConfig(), run_dir=run_dir, info=RunInfo("teacher", model_name, NUM_CLASSES, {}, "-"),
                      perf=perf)
        for name, objective in objectives.items()
    }
    for trainer in trainers.values():
        trainer.train_batches = FixedBatches(batch, warmup)
        trainer.train_epoch(0)
        trainer.train_batches = FixedBatches(batch, steps)
    seconds: dict[str, list[float]] = {name: [] for name in trainers}
    ratios = []
    for r in range(repeats):
        order = list(trainers) if r % 2 == 0 else list(reversed(trainers))
        block = {name: time_block(lambda t=trainers[name]: t.train_epoch(0), device) / steps for name in order}
        for name, value in block.items():
            seconds[name].append(value)
        ratios.append(block["enriched"] / block["vanilla"])

    # the method's own part: objectives on fixed logits and embeddings of the step's shape
    generator = torch.Generator(device=device).manual_seed(1)
    stub = FixedOutput(torch.randn(2 * batch_size, NUM_CLASSES, device=device, generator=generator),
                       torch.randn(2 * batch_size, dim, device=device, generator=generator))

    def stub_steps(objective: nn.Module) -> None:
        for _ in range(steps * 4):
            with perf.autocast():
                result = objective(stub, batch)
            sum(result.losses.values()).backward()

    for objective in objectives.values():
        stub_steps(objective)
    part = {name: [] for name in objectives}
    for _ in range(repeats):
        for name, objective in objectives.items():
            part[name].append(time_block(lambda o=objective: stub_steps(o), device) / (steps * 4))
    ops = {name: operations_per_step(objective, stub, batch, perf) for name, objective in objectives.items()}
    vanilla_s = median(seconds["vanilla"])
    method_s = max(median(part["enriched"]) - median(part["vanilla"]), 0.0)
    return {
        "model": model_name, "batch": batch_size, "views": 2,
        "vanilla_ms": 1e3 * vanilla_s, "enriched_ms": 1e3 * median(seconds["enriched"]),
        "ratio": median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
        "method_ms": 1e3 * method_s, "implied_ratio": (vanilla_s + method_s) / vanilla_s,
        "method_ops": ops["enriched"] - ops["vanilla"],
        "images_per_s_vanilla": batch_size / vanilla_s, "repeats": repeats, "steps_per_block": steps,
        "ratios": ratios,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    parser.add_argument("--models", nargs="+", help="default: resnet8x4 on the CPU, resnet32x4 on CUDA")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[64, 256])
    parser.add_argument("--repeats", type=int, default=5, help="alternating blocks per variant")
    parser.add_argument("--steps", type=int, help="steps per block (default: 1 on the CPU, 20 on CUDA)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default: 1 on the CPU, 10 on CUDA)")
    parser.add_argument("--compile", action="store_true", help="compile both steps (perf.compile=true)")
    parser.add_argument("--data-root", help="folder with cifar-100-python (default: the usual places, "
                        "else synthetic CIFAR-shaped images)")
    args = parser.parse_args(argv)
    device = setup_device(args)
    cuda = device.type == "cuda"
    perf = perf_for(device, compile=args.compile)
    models = args.models or (["resnet32x4"] if cuda else ["resnet8x4"])
    steps = args.steps or (20 if cuda else 1)
    warmup = args.warmup if args.warmup is not None else (10 if cuda else 1)
    data, source = cifar100_train(args.data_root)
    rows = [measure(m, b, device, perf, data, args.repeats, steps, warmup) for m in models for b in args.batch_sizes]
    print(f"# Method overhead: teacher step with intra-class loss + gate + cache vs without (two views both)\n"
          f"machine: {machine(device)}\nsettings: {perf.describe()}\ndata: {source}\n")
    print(table(rows, ["model", "batch", "vanilla_ms", "enriched_ms", "ratio", "ratio_min", "ratio_max",
                       "method_ms", "implied_ratio", "method_ops", "images_per_s_vanilla"]))
    worst = max(r["ratio"] for r in rows)
    print(f"\ntarget: median ratio <= 1.05; worst measured {worst:.3f} -> {'met' if worst <= 1.05 else 'NOT met'}")
    write_json(args.json, {"benchmark": "overhead", "machine": machine(device), "settings": perf.describe(),
                           "data": source, "results": rows, "target": 1.05, "met": worst <= 1.05})
    return 0


if __name__ == "__main__":
    sys.exit(main())
