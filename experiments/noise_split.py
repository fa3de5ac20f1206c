"""Where the noise of the main comparison comes from (docs/results.md, "Where the noise comes from";
issue #23, item 2), from the checkpoints of a sweep of configs/cifar20-16px-noise.yaml (the main
comparison with three students per teacher run); no training.

    PYTHONPATH=src python experiments/noise_split.py RUNS [--seeds 0 1] [--out docs/results/noise-split.json]

RUNS is the sweep's --out. Every finished run of the given teacher seeds is scored on test (and each
teacher on its unaugmented training images too); printed and written as JSON:

* students: per arm, the split of the spread of accuracies into per-image flipping and a model-level
  part (intrakd.analysis.agreement.accuracy_spread), among the first students of different teacher
  seeds and among the students of one teacher run; the split of the spread into the part the teachers
  bring and the part of the students' own seeds (teacher_student_split); image-by-image agreement
  between students; the test set's own standard error of one paired difference, and the part of the
  mean difference over all pairs that belongs to the images rather than to the pairs' flipping
  (fixed_test_set_se);
* teachers: the soft labels' KL at T = 4 from the vanilla teacher of seed s to the enriched teacher
  of the same seed, to the vanilla and to the enriched teachers of the other seeds, on test and on the
  training images (what a student is taught on), and each teacher's off-target mass there;
* design: for 1 to 8 students per teacher, the paired teacher runs needed for a 95% half-width of 0.5
  points on the enriched-minus-vanilla student difference, and their cost in thread-hours at the
  runs' median wall times; and the same with the students' per-image flipping removed (what an
  unbounded test set would give).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import sys
from pathlib import Path

import torch

from intrakd.analysis.agreement import (
    accuracy_spread,
    correctness,
    fixed_test_set_se,
    prediction_agreement,
    soft_label_kl,
    teacher_student_split,
)
from intrakd.analysis.analyze import predict_checkpoint
from intrakd.analysis.comparison import seeds_for_halfwidth
from intrakd.analysis.softlabels import soft_label_samples
from intrakd.analysis.sweep import student_folder

ARMS = {"vanilla": "intra.weight=0", "enriched": "intra.weight=0.02"}
TEMPERATURE = 4.0
HALF_WIDTH = 0.5
"""The resolution asked for (points): the 95% half-width of the mean student difference."""


def _predict(run: Path, split: str):
    if not (run / "summary.json").is_file():
        return None
    return predict_checkpoint(run / "checkpoints" / "last.pt", split, device="cpu", command="noise_split")[0]


def _wall_minutes(run: Path) -> float:
    return json.loads((run / "summary.json").read_text())["wall_seconds"] / 60


def _students(runs: Path, cell: str, seeds: list[int]) -> dict[tuple[int, int], Path]:
    """The finished student runs of teacher ``cell``: (teacher seed, student index) -> folder."""
    found = {}
    for seed in seeds:
        j = 0
        while (folder := runs / "students" / cell / "base" / student_folder(seed, j)).is_dir():
            if (folder / "summary.json").is_file():
                found[seed, j] = folder
            j += 1
    return found


def design(split: dict[str, dict[str, float]], teacher_minutes: float, student_minutes: float,
           per_teacher: range = range(1, 9)) -> list[dict[str, float]]:
    """For each number of students per teacher run, the fewest paired teacher runs whose 95% t-interval
    of the mean enriched-minus-vanilla difference (students averaged per teacher run, arms taken as
    independent) has a half-width of at most :data:`HALF_WIDTH`, and the thread-hours they cost.
    ``split``: teacher_student_split per arm (a negative part counts as 0)."""
    teacher = sum(max(s["teacher_variance"], 0.0) for s in split.values())
    student = sum(max(s["student_variance"], 0.0) for s in split.values())
    rows = []
    for n in per_teacher:
        variance = teacher + student / n
        pairs = seeds_for_halfwidth(math.sqrt(variance), HALF_WIDTH)
        rows.append({"students_per_teacher": n, "teacher_pairs": pairs, "difference_sd": math.sqrt(variance),
                     "thread_hours": pairs * 2 * (teacher_minutes + n * student_minutes) / 60})
    return rows


def collect(runs: Path, seeds: list[int], arms: dict[str, str] = ARMS) -> dict:
    """Every figure of the noise split that the finished runs of teacher ``seeds`` allow (``arms``:
    the vanilla and the enriched teacher cells)."""
    students, teachers, walls = {}, {}, {"teacher": [], "student": []}
    for arm, cell in arms.items():
        for seed in seeds:
            run = runs / "teachers" / cell / f"seed{seed}"
            for split in ("test", "train"):
                pred = _predict(run, split)
                if pred is not None:
                    teachers[arm, seed, split] = pred
            if (arm, seed, "test") in teachers:
                walls["teacher"].append(_wall_minutes(run))
        for (seed, j), folder in _students(runs, cell, seeds).items():
            students[arm, seed, j] = _predict(folder, "test")
            walls["student"].append(_wall_minutes(folder))

    def right(key):
        return correctness(students[key].logits, students[key].labels)

    result: dict = {"runs": str(runs), "seeds": seeds, "temperature": TEMPERATURE,
                    "students_found": sorted(f"{a}/{student_folder(s, j)}" for a, s, j in students),
                    "teachers_found": sorted(f"{a}/seed{s}/{p}" for a, s, p in teachers),
                    "wall_minutes_median": {k: statistics.median(v) for k, v in walls.items() if v}}
    across, within, split, accuracies = {}, {}, {}, {}
    for arm in arms:
        mine = sorted((s, j) for a, s, j in students if a == arm)
        accuracies[arm] = {student_folder(s, j): 100.0 * right((arm, s, j)).mean().item()
                           for s, j in mine}
        firsts = [s for s, j in mine if j == 0]
        if len(firsts) >= 2:
            across[arm] = {
                "spread": accuracy_spread(torch.stack([right((arm, s, 0)) for s in firsts])),
                "pairs": {f"seed{a} vs seed{b}": prediction_agreement(
                    students[arm, a, 0].logits, students[arm, b, 0].logits, students[arm, a, 0].labels, TEMPERATURE)
                    for a, b in itertools.combinations(firsts, 2)}}
        groups = {s: [j for t, j in mine if t == s] for s in firsts}
        within[arm] = {f"teacher seed{s}": {
            "spread": accuracy_spread(torch.stack([right((arm, s, j)) for j in js])),
            "top1_disagreement_mean": statistics.mean(
                prediction_agreement(students[arm, s, a].logits, students[arm, s, b].logits,
                                     students[arm, s, a].labels, TEMPERATURE)["top1_disagreement"]
                for a, b in itertools.combinations(js, 2))}
            for s, js in groups.items() if len(js) >= 2}
        if len(groups) >= 2 and any(len(js) >= 2 for js in groups.values()):
            split[arm] = teacher_student_split(
                [[100.0 * right((arm, s, j)).mean().item() for j in js] for s, js in groups.items()])
    result["student_accuracy"] = accuracies
    result["students_of_different_teacher_seeds"] = across
    result["students_of_one_teacher"] = within
    result["teacher_student_split"] = split

    pairs = sorted((s, j) for a, s, j in students if a == "vanilla" and ("enriched", s, j) in students)
    result["students_of_the_two_arms"] = {
        student_folder(s, j): prediction_agreement(
            students["vanilla", s, j].logits, students["enriched", s, j].logits, students["vanilla", s, j].labels,
            TEMPERATURE) for s, j in pairs}
    if len(pairs) >= 2:
        result["mean_difference_test_set_se"] = fixed_test_set_se(
            torch.stack([right(("vanilla", s, j)) for s, j in pairs]),
            torch.stack([right(("enriched", s, j)) for s, j in pairs]))
    if len(split) == 2 and walls["teacher"] and walls["student"]:
        minutes = statistics.median(walls["teacher"]), statistics.median(walls["student"])
        result["design"] = design(split, *minutes)
        unbounded = {arm: {**parts, "student_variance": parts["student_variance"] - statistics.mean(
            w["spread"]["image_variance"] for w in within[arm].values())} for arm, parts in split.items()}
        result["design_without_flipping"] = design(unbounded, *minutes)

    kl: dict = {}
    for part in ("test", "train"):
        rows: dict = {"same seed, enriched": {}, "other seed, vanilla": {}, "other seed, enriched": {}}
        for s, t, arm in itertools.product(seeds, seeds, arms):
            if (arm, t) == ("vanilla", s) or ("vanilla", s, part) not in teachers or (arm, t, part) not in teachers:
                continue
            group = "same seed, enriched" if t == s else f"other seed, {arm}"
            rows[group][f"vanilla seed{s} -> {arm} seed{t}"] = soft_label_kl(
                teachers["vanilla", s, part].logits, teachers[arm, t, part].logits, TEMPERATURE).mean().item()
        kl[part] = {group: {"mean": statistics.mean(pairs_kl.values()), "pairs": pairs_kl}
                    for group, pairs_kl in rows.items() if pairs_kl}
    result["teacher_kl"] = kl
    result["teachers"] = {
        f"{a}/seed{s}/{p}": {"acc": 100.0 * correctness(pred.logits, pred.labels).mean().item(),
                             "off_target_mass": soft_label_samples(pred.logits, pred.labels, TEMPERATURE)[
                                 "off_target_mass"].mean().item()}
        for (a, s, p), pred in sorted(teachers.items())}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, help="the sweep's --out")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="teacher seeds")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--cells", nargs=2, metavar=("VANILLA", "ENRICHED"),
                        default=[ARMS["vanilla"], ARMS["enriched"]], help="teacher cell names")
    args = parser.parse_args(argv)
    if not (args.runs / "teachers").is_dir():
        print(f"noise_split: {args.runs} holds no teachers/ folder: give the sweep's --out", file=sys.stderr)
        return 2
    vanilla, enriched = args.cells
    result = collect(args.runs, args.seeds, {"vanilla": vanilla, "enriched": enriched})
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
