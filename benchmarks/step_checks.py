"""Checks of the training step: no host synchronisation, and compilation without a graph break.

* sync (CUDA only): ``torch.cuda.set_sync_debug_mode("error")`` around (a) the method's own part
  (intra-class loss, margin gate and feature cache, forward and backward, on fixed logits and
  embeddings), (b) whole Trainer steps of the enriched teacher and of KD distillation: batch
  production on the device, forward, loss, backward, optimizer step and the metric accumulation.
  The first step runs unchecked (it moves the accumulators to the device). A synchronising
  operation raises; the check reports it with the intrakd lines that led to it.
* compile: the teacher objective's loss, gate and cache with ``torch.compile(fullgraph=True)``
  (any graph break is an error) and ``error_on_recompile``, a few steps against eager; then the
  whole teacher step (model forward + objective) the same way.

    PYTHONPATH=src python benchmarks/step_checks.py --json checks.json           # on a CUDA machine
    PYTHONPATH=src python benchmarks/step_checks.py --device cpu --backend aot_eager   # compile checks only
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from _common import (
    FirstBatches,
    add_common_args,
    cifar100_train,
    fed_model,
    machine,
    perf_for,
    setup_device,
    write_json,
)
from overhead import FixedOutput, fill_cache

from intrakd.config import DistillConfig, IntraConfig, OptimConfig
from intrakd.data.tensor_data import Batch, Batches
from intrakd.objectives import IntraClassTeacherObjective, TrainSetInfo, create_distiller
from intrakd.train.accel import PerfSettings
from intrakd.train.loop import RunInfo, Trainer

NUM_CLASSES = 100
STUB_DIM = 256  # the embedding size of resnet8x4 and resnet32x4


def _where(err: BaseException) -> str:
    """The error and the intrakd / benchmark source lines that led to it."""
    frames = [f for f in traceback.extract_tb(err.__traceback__)
              if "intrakd" in f.filename or "benchmarks" in f.filename]
    lines = [f"{Path(f.filename).name}:{f.lineno} {f.line}" for f in frames[-4:]]
    return f"{type(err).__name__}: {str(err).strip()[:300]} | at " + " <- ".join(reversed(lines))


class SyncChecked:
    """``batches`` with the CUDA sync debug mode set to "error" from step ``after`` on."""

    def __init__(self, batches: Batches, after: int) -> None:
        self.batches, self.after = batches, after

    def set_epoch(self, epoch: int) -> None:
        self.batches.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        try:
            for i, batch in enumerate(self.batches):
                torch.cuda.set_sync_debug_mode("error" if i >= self.after else "default")
                yield batch
        finally:
            torch.cuda.set_sync_debug_mode("default")


def _enriched(dim: int, device: torch.device) -> IntraClassTeacherObjective:
    objective = IntraClassTeacherObjective(IntraConfig(), NUM_CLASSES, dim, views=2).to(device)
    fill_cache(objective, device)
    return objective


def _stub_batch(batch_size: int, dim: int, device: torch.device) -> tuple[FixedOutput, Batch]:
    """Fixed logits (scaled so that the margin gate lets some through) and embeddings, and a batch."""
    generator = torch.Generator(device=device).manual_seed(0)
    stub = FixedOutput(torch.randn(2 * batch_size, NUM_CLASSES, device=device, generator=generator) * 4,
                       torch.randn(2 * batch_size, dim, device=device, generator=generator))
    views = tuple(torch.zeros(batch_size, 3, 32, 32, device=device) for _ in range(2))
    labels = torch.randint(0, NUM_CLASSES, (batch_size,), device=device, generator=generator)
    return stub, Batch(views, labels, torch.arange(batch_size, device=device))


def sync_part(device: torch.device, perf: PerfSettings, batch_size: int, steps: int) -> dict[str, Any]:
    """The method's own part under sync debug mode "error"."""
    objective = _enriched(STUB_DIM, device)
    stub, batch = _stub_batch(batch_size, STUB_DIM, device)
    with perf.autocast():
        sum(objective(stub, batch).losses.values()).backward()
    try:
        torch.cuda.set_sync_debug_mode("error")
        for _ in range(steps):
            with perf.autocast():
                result = objective(stub, batch)
            sum(result.losses.values()).backward()
        return {"check": "sync: loss + gate + cache", "ok": True, "detail": f"{steps} steps, no synchronisation"}
    except RuntimeError as err:
        return {"check": "sync: loss + gate + cache", "ok": False, "detail": _where(err)}
    finally:
        torch.cuda.set_sync_debug_mode("default")


def sync_steps(task: str, device: torch.device, perf: PerfSettings, data, batch_size: int, steps: int) -> dict:
    """Whole Trainer steps (teacher: enriched resnet32x4; kd: resnet32x4 -> resnet8x4) under "error"."""
    torch.manual_seed(0)
    teacher = None
    if task == "teacher":
        model = perf.prepare_model(fed_model("resnet32x4", num_classes=NUM_CLASSES).to(device))
        objective = _enriched(model.embedding_dim, device)
    else:
        model = perf.prepare_model(fed_model("resnet8x4", num_classes=NUM_CLASSES).to(device))
        teacher = perf.prepare_model(fed_model("resnet32x4", num_classes=NUM_CLASSES).to(device).eval()
                                     .requires_grad_(False))
        info = TrainSetInfo(NUM_CLASSES, torch.zeros(0, dtype=torch.long), (3, 32, 32))
        objective = create_distiller(DistillConfig.recipe("kd"), model, teacher, info)
    batches = data.train_batches(batch_size, objective.num_views, 0, device)
    trainer = Trainer(model=model, objective=objective, train_batches=FirstBatches(batches, 3), eval_set=data,
                      optim=OptimConfig(), run_dir=Path(tempfile.mkdtemp(prefix="intrakd-checks-")),
                      info=RunInfo(task, "checked", NUM_CLASSES, {}, "-"), teacher=teacher, perf=perf)
    trainer.train_epoch(0)  # cuDNN autotuning and the first allocations, unchecked
    trainer.train_batches = SyncChecked(FirstBatches(batches, steps + 1), after=1)
    name = f"sync: whole {task} step (data, forward, loss, backward, optimizer, metrics)"
    try:
        trainer.train_epoch(1)
        return {"check": name, "ok": True, "detail": f"{steps} steps, no synchronisation"}
    except RuntimeError as err:
        return {"check": name, "ok": False, "detail": _where(err)}
    finally:
        torch.cuda.set_sync_debug_mode("default")


def compile_check(device: torch.device, perf: PerfSettings, backend: str, batch_size: int,
                  model_name: str | None) -> dict[str, Any]:
    """fullgraph compile of the objective (on fixed outputs, or with ``model_name``) vs eager, 3 steps."""
    torch._dynamo.reset()
    twins = []
    for _ in range(2):
        torch.manual_seed(0)
        if model_name is None:
            model, batch = _stub_batch(batch_size, STUB_DIM, device)
        else:
            model = perf.prepare_model(fed_model(model_name, num_classes=NUM_CLASSES).to(device))
            generator = torch.Generator(device=device).manual_seed(0)
            views = tuple(torch.randn(batch_size, 3, 32, 32, device=device, generator=generator) for _ in range(2))
            batch = Batch(views, torch.randint(0, NUM_CLASSES, (batch_size,), device=device, generator=generator),
                          torch.arange(batch_size, device=device))
        twins.append((model, _enriched(STUB_DIM if model_name is None else model.embedding_dim, device), batch))
    name = f"compile fullgraph: {'loss + gate + cache' if model_name is None else f'whole teacher step ({model_name})'}"
    (model, objective, batch), (eager_model, eager_objective, _) = twins
    compiled = torch.compile(objective, backend=backend, fullgraph=True)
    start = time.perf_counter()
    try:
        worst = 0.0
        with torch._dynamo.config.patch(error_on_recompile=True):
            for _ in range(3):
                with perf.autocast():
                    results = [compiled(model, batch), eager_objective(eager_model, batch)]
                for result in results:
                    sum(result.losses.values()).backward()
                for key in ("ce", "intra"):
                    a, b = (r.losses[key].detach().float() for r in results)
                    worst = max(worst, float((a - b).abs() / b.abs().clamp_min(1e-12)))
        cache_equal = torch.equal(objective.cache.written_at, eager_objective.cache.written_at)
        ok = worst < 2e-2 and cache_equal
        detail = (f"no graph break, no recompile in 3 steps; compile {time.perf_counter() - start:.1f} s; "
                  f"largest relative loss difference vs eager {worst:.2e}; cache slots "
                  f"{'identical' if cache_equal else 'DIFFERENT'}")
        return {"check": name, "ok": ok, "detail": detail}
    except Exception as err:  # a graph break, a recompile or a failed compile: all reported
        return {"check": name, "ok": False, "detail": _where(err)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5, help="checked steps")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend (aot_eager: quick)")
    parser.add_argument("--full-step-model", default="resnet8x4",
                        help="model of the whole-step compile check ('' to skip)")
    parser.add_argument("--data-root", help="folder with cifar-100-python")
    args = parser.parse_args(argv)
    device = setup_device(args)
    perf = perf_for(device)
    checks = []
    if device.type == "cuda":
        data, source = cifar100_train(args.data_root)
        checks.append(sync_part(device, perf, args.batch_size, args.steps))
        for task in ("teacher", "kd"):
            checks.append(sync_steps(task, device, perf, data, args.batch_size, args.steps))
    else:
        source = "-"
        checks.append({"check": "sync", "ok": None, "detail": "skipped: needs CUDA"})
    checks.append(compile_check(device, perf, args.backend, args.batch_size, None))
    if args.full_step_model:
        checks.append(compile_check(device, perf, args.backend, args.batch_size, args.full_step_model))
    print(f"# Step checks\nmachine: {machine(device)}\nsettings: {perf.describe()}\ndata: {source}\n")
    for check in checks:
        status = {True: "PASS", False: "FAIL", None: "SKIP"}[check["ok"]]
        print(f"[{status}] {check['check']}: {check['detail']}")
    write_json(args.json, {"benchmark": "step_checks", "machine": machine(device), "settings": perf.describe(),
                           "backend": args.backend, "checks": checks})
    return 0 if all(c["ok"] is not False for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
