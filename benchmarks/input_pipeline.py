"""Input pipeline: training throughput on real data (the split held on the device as uint8, shuffled
and augmented there by ``TensorBatches``) against the same Trainer fed one synthetic batch that is
already on the device (no data work at all). Target: real >= 0.95x synthetic.

Also the pipeline alone (batches/s without a model, one and two views) and, for scale, the reference
PIL + DataLoader(2 workers) pipeline alone.

    PYTHONPATH=src python benchmarks/input_pipeline.py                 # resnet8x4 on the CPU, resnet32x4 on CUDA
    PYTHONPATH=src python benchmarks/input_pipeline.py --json out.json
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
from pathlib import Path

import torch
from _common import (
    FirstBatches,
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
from loop_vs_reference import REFERENCE_WORKERS, PILCifar
from torch.utils.data import DataLoader

from intrakd.config import IntraConfig, OptimConfig
from intrakd.data.tensor_data import TensorDataset
from intrakd.objectives import IntraClassTeacherObjective
from intrakd.train.loop import RunInfo, Trainer

NUM_CLASSES = 100


def training(model_name: str, views: int, data: TensorDataset, device: torch.device, batch_size: int,
             repeats: int, steps: int, warmup: int) -> dict:
    """Trainer images/s on real batches vs on one synthetic on-device batch (alternating blocks)."""
    perf = perf_for(device)
    torch.manual_seed(0)
    model = perf.prepare_model(fed_model(model_name, num_classes=NUM_CLASSES).to(device))
    intra = IntraConfig() if views == 2 else IntraConfig(weight=0.0)
    objective = IntraClassTeacherObjective(intra, NUM_CLASSES, model.embedding_dim, views).to(device)
    real = data.train_batches(batch_size, views, 0, device)
    synthetic = FixedBatches(next(iter(real)), steps)
    trainer = Trainer(model=model, objective=objective, train_batches=synthetic, eval_set=data,
                      optim=OptimConfig(), run_dir=Path(tempfile.mkdtemp(prefix="intrakd-pipeline-")),
                      info=RunInfo("teacher", model_name, NUM_CLASSES, {}, "-"), perf=perf)
    sources = {"real": FirstBatches(real, steps), "synthetic": synthetic}
    trainer.train_batches = FirstBatches(real, warmup)
    trainer.train_epoch(0)
    rates: dict[str, list[float]] = {name: [] for name in sources}
    for r in range(repeats):
        for name in (list(sources) if r % 2 == 0 else list(reversed(sources))):
            trainer.train_batches = sources[name]
            rates[name].append(batch_size * steps / time_block(lambda: trainer.train_epoch(r + 1), device))
    real_rate, synthetic_rate = median(rates["real"]), median(rates["synthetic"])
    return {"model": model_name, "views": views, "real_images_per_s": real_rate,
            "synthetic_images_per_s": synthetic_rate, "ratio": real_rate / synthetic_rate,
            "samples_real": rates["real"], "samples_synthetic": rates["synthetic"]}


def pipeline_alone(data: TensorDataset, device: torch.device, batch_size: int, batches: int) -> list[dict]:
    """Images/s of producing batches only: intrakd's (1 and 2 views) and the reference's."""
    rows = []
    for views in (1, 2):
        source = data.train_batches(batch_size, views, 0, device)

        def consume(n: int = batches) -> None:
            for _ in itertools.islice(iter(source), n):
                pass

        consume(3)
        seconds = time_block(consume, device)
        rows.append({"pipeline": f"intrakd TensorBatches ({views} view{'s' * (views > 1)}, on {device.type})",
                     "images_per_s": batch_size * batches / seconds})
    loader = DataLoader(PILCifar(data), batch_size=batch_size, shuffle=True, num_workers=REFERENCE_WORKERS,
                        drop_last=True)
    iterator = iter(loader)
    for _ in range(REFERENCE_WORKERS * 2):  # workers started and their first batches out
        next(iterator)

    def consume_reference() -> None:
        for _ in range(batches):
            images, labels = next(iterator)
            images.to(device), labels.to(device)

    seconds = time_block(consume_reference, device)
    rows.append({"pipeline": f"reference PIL + DataLoader({REFERENCE_WORKERS} workers), 1 view, copied to "
                             f"{device.type}", "images_per_s": batch_size * batches / seconds})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    parser.add_argument("--models", nargs="+", help="default: resnet32x4 on CUDA, resnet8x4 on the CPU")
    parser.add_argument("--views", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, help="timed steps per block (default: 50 on CUDA, 3 on the CPU)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default: 20 on CUDA, 1 on the CPU)")
    parser.add_argument("--pipeline-batches", type=int, default=50, help="batches timed for the pipeline alone")
    parser.add_argument("--data-root", help="folder with cifar-100-python")
    args = parser.parse_args(argv)
    device = setup_device(args)
    cuda = device.type == "cuda"
    models = args.models or (["resnet32x4"] if cuda else ["resnet8x4"])
    steps = args.steps or (50 if cuda else 3)
    warmup = args.warmup if args.warmup is not None else (20 if cuda else 1)
    data, source = cifar100_train(args.data_root)
    rows = [training(m, v, data, device, args.batch_size, args.repeats, steps, warmup)
            for m in models for v in args.views]
    alone = pipeline_alone(data, device, args.batch_size, args.pipeline_batches)
    print(f"# Input pipeline: real data vs synthetic on-device batches (batch {args.batch_size})\n"
          f"machine: {machine(device)}\nsettings: {perf_for(device).describe()}\ndata: {source}\n")
    print(table(rows, ["model", "views", "real_images_per_s", "synthetic_images_per_s", "ratio"]))
    print()
    print(table(alone, ["pipeline", "images_per_s"]))
    worst = min(r["ratio"] for r in rows)
    verdict = f"target: real >= 0.95x synthetic; worst {worst:.3f} -> {'met' if worst >= 0.95 else 'NOT met'}"
    print("\n" + verdict)
    write_json(args.json, {"benchmark": "input_pipeline", "machine": machine(device), "data": source,
                           "batch_size": args.batch_size, "results": rows, "pipeline_alone": alone,
                           "verdict": verdict, "met": worst >= 0.95})
    return 0


if __name__ == "__main__":
    sys.exit(main())
