"""The premise protocol's pilot against the criteria written on docs/results.md before any run
("The premise protocol"; issue #23, item 5), from the finished runs of a sweep of
configs/premise-50class-16px.yaml; no training.

    PYTHONPATH=src python -m experiments.premise_pilot RUNS [--seed 0] [--into docs/results/summary.json]

RUNS is the sweep's --out. Reads each run's ``eval_{train,val,test}.json`` (written by the sweep) and
prints one line per criterion and arm (stdout: a Markdown table); ``--into`` also stores the figures in
that JSON object under ``premise_pilot``. An arm whose runs are not finished is reported as missing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

CE_ONLY = "model=resnet8,views=1,intra.weight=0"
VANILLA_TEACHERS = {"one-view vanilla": "views=1,intra.weight=0", "two-view vanilla": "intra.weight=0"}
ENRICHED_TEACHERS = {"enriched, lambda 0.05": "intra.weight=0.05", "enriched, lambda auto": "intra.weight=auto"}

MIN_TRAIN_ACC = 99.0
"""Criterion 1: the vanilla teacher's unaugmented training accuracy (%), at least."""
MAX_OFF_TARGET_MASS = 0.40
"""Criterion 2: the vanilla teacher's off-target mass at T = 4 on its training images, at most."""
MIN_KD_MARGIN = 1.0
"""Criterion 3: KD student of the vanilla teacher minus the CE-only student, validation top-1 (points)."""
MIN_TEST_IMAGES = 5000
"""Criterion 4: images in the test split."""
CRITERIA = ("train_acc", "train_off_target_mass", "test_images", "kd_minus_ce_only_val")
"""The criteria each vanilla arm is checked against (the keys of its ``criteria`` entry)."""


def _eval(run: Path, split: str) -> dict | None:
    path = run / f"eval_{split}.json"
    return json.loads(path.read_text()) if path.is_file() and (run / "summary.json").is_file() else None


def collect(runs: Path, seed: int) -> dict:
    """Every arm's figures and each vanilla arm's criteria, from the finished runs of ``seed``."""
    def teacher(cell: str) -> Path:
        return runs / "teachers" / cell / f"seed{seed}"

    def student(cell: str) -> Path:
        return runs / "students" / cell / "base" / f"seed{seed}"

    arms: dict[str, dict] = {}
    ce_val, ce_test = _eval(teacher(CE_ONLY), "val"), _eval(teacher(CE_ONLY), "test")
    if ce_val and ce_test:
        arms["CE-only resnet8"] = {"val_acc": ce_val["acc"], "test_acc": ce_test["acc"]}
    for name, cell in {**VANILLA_TEACHERS, **ENRICHED_TEACHERS}.items():
        train, val, test = (_eval(teacher(cell), s) for s in ("train", "val", "test"))
        kd_val, kd_test = _eval(student(cell), "val"), _eval(student(cell), "test")
        arm: dict = {}
        if train and val and test:
            arm["teacher"] = {"train_acc": train["acc"], "train_off_target_mass": train["soft_off_target_mass"],
                              "val_acc": val["acc"], "test_acc": test["acc"],
                              "test_off_target_mass": test["soft_off_target_mass"], "test_images": test["images"],
                              "temperature": train["temperature"]}
        if kd_val and kd_test:
            arm["kd_student"] = {"val_acc": kd_val["acc"], "test_acc": kd_test["acc"]}
        arms[name] = arm
    criteria: dict[str, dict] = {}
    for name in VANILLA_TEACHERS:
        t, s = arms[name].get("teacher"), arms[name].get("kd_student")
        checks: dict[str, dict] = {}
        if t:
            checks["train_acc"] = {"value": t["train_acc"], "threshold": f">= {MIN_TRAIN_ACC}",
                                   "met": t["train_acc"] >= MIN_TRAIN_ACC}
            checks["train_off_target_mass"] = {"value": t["train_off_target_mass"],
                                               "threshold": f"<= {MAX_OFF_TARGET_MASS}",
                                               "met": t["train_off_target_mass"] <= MAX_OFF_TARGET_MASS}
            checks["test_images"] = {"value": t["test_images"], "threshold": f">= {MIN_TEST_IMAGES}",
                                     "met": t["test_images"] >= MIN_TEST_IMAGES}
        if s and "CE-only resnet8" in arms:
            margin = s["val_acc"] - arms["CE-only resnet8"]["val_acc"]
            checks["kd_minus_ce_only_val"] = {"value": margin, "threshold": f">= +{MIN_KD_MARGIN}",
                                              "met": margin >= MIN_KD_MARGIN}
        criteria[name] = checks
    complete = all(set(c) == set(CRITERIA) for c in criteria.values())
    return {"runs": str(runs), "seed": seed, "arms": arms, "criteria": criteria,
            "all_criteria_met": complete and all(c["met"] for cs in criteria.values() for c in cs.values()),
            "complete": complete}


def table(result: dict) -> str:
    """The criteria, one row per criterion and vanilla arm, then every arm's accuracies (Markdown)."""
    lines = ["| vanilla teacher | criterion | threshold | pilot | met |", "|---|---|---|---|---|"]
    for arm, checks in result["criteria"].items():
        if not checks:
            lines.append(f"| {arm} | (runs not finished) | | | |")
        for name, c in checks.items():
            value = f"{c['value']:+.2f}" if name.startswith("kd_") else f"{c['value']:.4g}"
            lines.append(f"| {arm} | {name} | {c['threshold']} | {value} | {'yes' if c['met'] else 'no'} |")
    lines += ["", ("| arm | teacher train / val / test top-1 | off-target mass at T = 4, train / test "
                   "| KD student val / test top-1 |"), "|---|---|---|---|"]
    for arm, figures in result["arms"].items():
        t, s = figures.get("teacher"), figures.get("kd_student")
        if arm == "CE-only resnet8":
            lines.append(f"| {arm} | - / {figures['val_acc']:.2f} / {figures['test_acc']:.2f} | - | - |")
            continue
        lines.append(f"| {arm} | " + (f"{t['train_acc']:.2f} / {t['val_acc']:.2f} / {t['test_acc']:.2f} | "
                                      f"{t['train_off_target_mass']:.3f} / {t['test_off_target_mass']:.3f}"
                                      if t else "not finished | not finished")
                     + " | " + (f"{s['val_acc']:.2f} / {s['test_acc']:.2f}" if s else "not finished") + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, help="the sweep's --out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--into", type=Path, help="also store the figures in this JSON object (key premise_pilot)")
    args = parser.parse_args(argv)
    if not args.runs.is_dir():
        print(f"premise_pilot: {args.runs} is not a folder: pass the sweep's --out", file=sys.stderr)
        return 2
    target = json.loads(args.into.read_text()) if args.into else None
    if target is not None and not isinstance(target, dict):
        print(f"premise_pilot: {args.into}: expected a JSON object", file=sys.stderr)
        return 2
    result = collect(args.runs, args.seed)
    print(table(result))
    if target is not None:
        target["premise_pilot"] = result
        args.into.write_text(json.dumps(target, indent=1) + "\n")
        print(f"written: {args.into}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
