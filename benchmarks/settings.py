"""Which speed settings pay on this device: a bare training step (forward, backward, SGD step on a
synthetic batch already on the device) with each setting of ``perf`` alone, against PyTorch's plain
behaviour (float32, default memory format, default SGD). Blocks alternate; medians are reported.
The "auto" row is what intrakd picks for the device; on the CPU the thread count is varied too.

    PYTHONPATH=src python benchmarks/settings.py                       # resnet8x4, batch 64
    PYTHONPATH=src python benchmarks/settings.py --compile --json out.json
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch
from _common import add_common_args, machine, median, setup_device, table, time_block, write_json
from loop_vs_reference import BareLoop, build_models

from intrakd.config import PerfConfig
from intrakd.train.accel import resolve_perf


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    parser.add_argument("--model", default="resnet8x4")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, help="timed steps per block (default: 50 on CUDA, 2 on the CPU)")
    parser.add_argument("--compile", action="store_true", help="also measure perf.compile=true (slow to build)")
    args = parser.parse_args(argv)
    device = setup_device(args)
    cuda = device.type == "cuda"
    steps = args.steps or (50 if cuda else 2)
    plain = dict(precision="fp32", channels_last=False, fused_optimizer=False)
    variants: dict[str, dict[str, Any]] = {
        "plain (fp32, NCHW, default SGD)": plain,
        "channels_last": {**plain, "channels_last": True},
        "bf16 autocast": {**plain, "precision": "bf16"},
        "bf16 + channels_last": {**plain, "precision": "bf16", "channels_last": True},
        "fused SGD": {**plain, "fused_optimizer": True},
        "auto (intrakd's default here)": {},
    }
    if args.compile:
        variants["auto + compile"] = {"compile": True}
    default_threads = torch.get_num_threads()
    thread_counts = [] if cuda else [t for t in range(1, (torch.get_num_threads() or 1) + 1) if t != default_threads]
    loops, threads = {}, {}
    for name, overrides in variants.items():
        perf = resolve_perf(PerfConfig(**overrides), device)
        perf.apply()
        student, _ = build_models(args.model, None, device, perf)
        loop = BareLoop(device, perf, student, None, args.batch_size)
        if perf.compile:
            loop.student = torch.compile(student)
        loops[name], threads[name] = loop, default_threads
    for count in thread_counts:
        perf = resolve_perf(PerfConfig(threads=count), device)
        student, _ = build_models(args.model, None, device, perf)
        name = f"auto, {count} thread{'s' * (count > 1)}"
        loops[name], threads[name] = BareLoop(device, perf, student, None, args.batch_size), count
    rates: dict[str, list[float]] = {name: [] for name in loops}
    for name, loop in loops.items():
        torch.set_num_threads(threads[name])
        loop.run(3 if not cuda else 20)
    for r in range(args.repeats):
        for name in (list(loops) if r % 2 == 0 else list(reversed(loops))):
            torch.set_num_threads(threads[name])
            rates[name].append(args.batch_size * steps / time_block(lambda: loops[name].run(steps), device))
    torch.set_num_threads(default_threads)
    base = median(rates["plain (fp32, NCHW, default SGD)"])
    rows = [{"setting": name, "threads": threads[name] if not cuda else None, "images_per_s": median(values),
             "vs_plain": median(values) / base, "samples": values} for name, values in rates.items()]
    print(f"# Speed settings: bare {args.model} training step, batch {args.batch_size}\n"
          f"machine: {machine(device)}\nauto here: {resolve_perf(PerfConfig(), device).describe()}\n")
    print(table(rows, ["setting", "threads", "images_per_s", "vs_plain"]))
    write_json(args.json, {"benchmark": "settings", "machine": machine(device), "model": args.model,
                           "batch_size": args.batch_size, "steps_per_block": steps, "results": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
