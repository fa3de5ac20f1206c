"""Where the noise of the main comparison comes from (docs/results.md, "Where the noise comes from";
issue #23, item 2), from the checkpoints of a sweep of configs/cifar20-16px-main.yaml; no training.

    PYTHONPATH=src python experiments/noise_split.py RUNS [--seeds 0 1] [--out docs/results/noise-split.json]

RUNS is the sweep's --out. Every finished run of the given seeds is scored on test (and each
teacher on its unaugmented training images too); printed and written as JSON:

* students: per arm, the split of the between-seed spread of accuracy into per-image flipping and a
  model-level part (intrakd.analysis.agreement.accuracy_spread), the binomial SE of the test set;
  image-by-image agreement between students of different seeds (same arm), and between the two arms'
  students of one seed (the test set's own SE of the paired difference);
* teachers: the soft labels' KL at T = 4 from the vanilla teacher of seed s to the enriched teacher
  of seed s, to the vanilla teacher of seed s+1, and to the enriched teacher of seed s+1, on test and
  on the training images (what a student is taught on), and each teacher's off-target mass there.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch

from intrakd.analysis.agreement import accuracy_spread, correctness, prediction_agreement, soft_label_kl
from intrakd.analysis.analyze import predict_checkpoint
from intrakd.analysis.softlabels import soft_label_samples

ARMS = {"vanilla": "intra.weight=0", "enriched": "intra.weight=0.02"}
CE_ONLY = "model=resnet8,views=1,intra.weight=0"
TEMPERATURE = 4.0


def _predict(run: Path, split: str):
    checkpoint = run / "checkpoints" / "last.pt"
    if not (run / "summary.json").is_file():
        return None
    return predict_checkpoint(checkpoint, split, device="cpu", command="noise_split")[0]


def collect(runs: Path, seeds: list[int], arms: dict[str, str] = ARMS, ce_only: str = CE_ONLY) -> dict:
    """Every figure of the noise split the finished runs of ``seeds`` allow (``arms``: the vanilla and
    enriched teacher cells; ``ce_only``: the CE-only student's cell)."""
    students, teachers = {}, {}
    for seed in seeds:
        for arm, cell in arms.items():
            teacher = runs / "teachers" / cell / f"seed{seed}"
            for split in ("test", "train"):
                pred = _predict(teacher, split)
                if pred is not None:
                    teachers[arm, seed, split] = pred
            pred = _predict(runs / "students" / cell / "base" / f"seed{seed}", "test")
            if pred is not None:
                students[arm, seed] = pred
        pred = _predict(runs / "teachers" / ce_only / f"seed{seed}", "test")
        if pred is not None:
            students["ce_only", seed] = pred

    result: dict = {"runs": str(runs), "seeds": seeds, "temperature": TEMPERATURE,
                    "students_found": sorted(f"{a}/seed{s}" for a, s in students),
                    "teachers_found": sorted(f"{a}/seed{s}/{p}" for a, s, p in teachers)}
    spread, same_arm = {}, {}
    for arm in ("vanilla", "enriched", "ce_only"):
        have = sorted(s for a, s in students if a == arm)
        if len(have) >= 2:
            labels = students[arm, have[0]].labels
            spread[arm] = accuracy_spread(torch.stack([correctness(students[arm, s].logits, labels) for s in have]))
            same_arm[arm] = {f"seed{a} vs seed{b}": prediction_agreement(
                students[arm, a].logits, students[arm, b].logits, labels, TEMPERATURE)
                for a, b in itertools.combinations(have, 2)}
    result["student_spread"] = spread
    result["students_of_two_seeds"] = same_arm
    result["students_of_the_two_arms"] = {
        f"seed{s}": prediction_agreement(students["vanilla", s].logits, students["enriched", s].logits,
                                         students["vanilla", s].labels, TEMPERATURE)
        for s in seeds if ("vanilla", s) in students and ("enriched", s) in students}

    kl: dict = {}
    for split in ("test", "train"):
        rows = {}
        for s, t, arm in itertools.product(seeds, seeds, ("vanilla", "enriched")):
            wanted = t in (s, s + 1) and (arm, t) != ("vanilla", s)
            if wanted and ("vanilla", s, split) in teachers and (arm, t, split) in teachers:
                first, second = teachers["vanilla", s, split], teachers[arm, t, split]
                rows[f"vanilla seed{s} -> {arm} seed{t}"] = soft_label_kl(
                    first.logits, second.logits, TEMPERATURE).mean().item()
        kl[split] = rows
    result["teacher_kl"] = kl
    result["teachers"] = {
        f"{a}/seed{s}/{p}": {"acc": 100.0 * correctness(pred.logits, pred.labels).mean().item(),
                             "off_target_mass": soft_label_samples(pred.logits, pred.labels, TEMPERATURE)[
                                 "off_target_mass"].mean().item()}
        for (a, s, p), pred in sorted(teachers.items())}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, help="the main comparison sweep's --out")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--cells", nargs=3, metavar=("VANILLA", "ENRICHED", "CE_ONLY"),
                        default=[ARMS["vanilla"], ARMS["enriched"], CE_ONLY], help="teacher cell names")
    args = parser.parse_args(argv)
    if not (args.runs / "teachers").is_dir():
        print(f"noise_split: {args.runs} holds no teachers/ folder: give the sweep's --out", file=sys.stderr)
        return 2
    vanilla, enriched, ce_only = args.cells
    result = collect(args.runs, args.seeds, {"vanilla": vanilla, "enriched": enriched}, ce_only)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
