"""Does ``intra.weight=auto`` choose lambda as well as a grid search? (docs/results.md, "Choosing
lambda").

For every dataset (a sweep file whose teacher grid holds fixed lambdas and ``auto``, each teacher with
its KD student, on the same seeds): the grid's best lambda is the one whose students have
the highest mean validation accuracy (a tie goes to the smaller lambda); on test, ``auto`` is compared
with it (paired by seed, 95% t interval). For every pair of datasets, each one's best lambda is
compared, used on the other, with the other's best.

    python -m experiments.lambda_choice --dataset NAME SWEEP.yaml [RUN_ROOT] [--dataset ...] --out PREFIX

writes ``PREFIX.json`` (every figure) and ``PREFIX.md`` (the tables of docs/results.md).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from experiments.evidence import is_ce_only_student
from intrakd.analysis.comparison import mean_std, paired_interval
from intrakd.analysis.runfolders import RunRecord, find_runs, read_metrics
from intrakd.analysis.sweep import load_sweep, plan
from intrakd.config import BAD_INPUT, ConfigError, intra_term_on

AUTO = "auto"
CHOOSE_ON = "val_acc"
REPORT_ON = "test_acc"


def _cells(runs: Sequence[RunRecord], kind: str, key: str) -> dict[Any, dict[int, RunRecord]]:
    """``lambda -> seed -> run`` of the runs of ``kind`` with an enriched teacher (``key``: the
    configuration key holding lambda)."""
    cells: dict[Any, dict[int, RunRecord]] = {}
    for run in runs:
        weight = run.config.get(key)
        if run.kind == kind and weight is not None and intra_term_on(weight):
            cells.setdefault(weight, {})[run.seed] = run
    return cells


def _paired(a: dict[int, RunRecord], b: dict[int, RunRecord], seeds: list[int], metric: str) -> dict[str, float]:
    x, y = [a[s].metrics[metric] for s in seeds], [b[s].metrics[metric] for s in seeds]
    low, high = paired_interval(x, y)
    return {"diff": mean_std(x)[0] - mean_std(y)[0], "low": low, "high": high, "n": len(seeds)}


def _lambda_in_force(teachers: dict[int, RunRecord], seeds: list[int]) -> dict[str, float]:
    """Mean over seeds of the epoch-mean lambda logged by ``auto`` teachers: first, middle, last epoch
    and the mean over all epochs."""
    per_seed = [[r["lambda"] for r in read_metrics(teachers[s].path) if "lambda" in r] for s in seeds]
    per_seed = [values for values in per_seed if values]
    if not per_seed:
        return {}
    epochs = min(len(v) for v in per_seed)
    at = {"first_epoch": 0, "middle_epoch": epochs // 2, "last_epoch": epochs - 1}
    out = {name: mean_std([v[i] for v in per_seed])[0] for name, i in at.items()}
    out["mean"] = mean_std([sum(v) / len(v) for v in per_seed])[0]
    return out


def _ce_only_students(runs: Sequence[RunRecord], students: dict[Any, dict[int, RunRecord]]) -> dict[int, RunRecord]:
    """``seed -> run`` of the students' model trained alone, if the sweep holds it: the reference for
    "does KD work here?"."""
    models = {run.config.get("model") for cell in students.values() for run in cell.values()}
    return {run.seed: run for run in runs if is_ce_only_student(run, models)}


def dataset_comparison(sweep: str | Path, run_root: str | Path | None = None) -> dict[str, Any]:
    """The grid, its best lambda (on students' validation accuracy), ``auto`` minus the best on
    test, and every cell's student minus the CE-only student where the sweep trains one, for the
    finished runs of the sweep file ``sweep`` (in its ``out`` folder, or in ``run_root``), restricted
    to the seeds that every cell has."""
    spec = load_sweep(sweep)
    if run_root is not None:
        spec.out = Path(run_root)
    run_dir = spec.out
    runs, _ = find_runs([job.out for job in plan(spec) if job.finished])
    students = _cells(runs, "student", "teacher.intra.weight")
    teachers = _cells(runs, "teacher", "intra.weight")
    if AUTO not in students or len(students) < 2:
        raise ConfigError(f"{run_dir}: needs students of intra.weight=auto and of at least one fixed lambda, "
                         f"found lambdas {sorted(map(str, students))}")
    seeds = sorted(set.intersection(*(set(c) for c in students.values()), *(set(c) for c in teachers.values())))
    if len(seeds) < 2:
        raise ConfigError(f"{run_dir}: fewer than two seeds common to every cell ({seeds})")
    fixed = sorted(w for w in students if w != AUTO)
    cells = {}
    for weight in [*fixed, AUTO]:
        row: dict[str, Any] = {}
        for role, table in (("student", students), ("teacher", teachers)):
            for metric in (CHOOSE_ON, REPORT_ON):
                mean, std = mean_std([table[weight][s].metrics[metric] for s in seeds])
                row[f"{role}_{metric}"] = {"mean": mean, "std": std}
        cells[str(weight)] = row
    best = max(fixed, key=lambda w: cells[str(w)][f"student_{CHOOSE_ON}"]["mean"])
    ce_only = _ce_only_students(runs, students)
    return {
        "run_dir": str(run_dir), "seeds": seeds, "fixed": fixed, "cells": cells, "best_fixed": best,
        "auto_minus_best": {role: _paired(table[AUTO], table[best], seeds, REPORT_ON)
                            for role, table in (("student", students), ("teacher", teachers))},
        "fixed_minus_best": {str(w): _paired(students[w], students[best], seeds, REPORT_ON) for w in fixed},
        "auto_lambda": _lambda_in_force(teachers[AUTO], seeds),
        "kd_minus_ce_only": {str(w): _paired(students[w], ce_only, seeds, REPORT_ON) for w in [*fixed, AUTO]}
        if set(seeds) <= set(ce_only) else {},
    }


def _pair(name_a: str, a: dict[str, Any], name_b: str, b: dict[str, Any]) -> dict[str, Any]:
    """The criteria for one pair of datasets: their best fixed lambdas differ, each one's best used on
    the other is worse there (the interval of the paired difference below 0: a best that differs
    only by noise does not count), and ``auto`` is within the 95% interval of the best on both."""

    def elsewhere(best: Any, there: dict[str, Any]) -> dict[str, Any]:
        if best == there["best_fixed"]:
            return {"lambda": best, "same_best": True, "worse": False}
        if str(best) not in there["fixed_minus_best"]:
            return {"lambda": best, "not_in_grid": True, "worse": False}
        difference = there["fixed_minus_best"][str(best)]
        return {"lambda": best, **difference, "worse": bool(difference["high"] < 0)}

    pair = {
        "datasets": [name_a, name_b], "best_fixed": [a["best_fixed"], b["best_fixed"]],
        "best_fixed_differs": a["best_fixed"] != b["best_fixed"],
        "a_best_on_b": elsewhere(a["best_fixed"], b), "b_best_on_a": elsewhere(b["best_fixed"], a),
        "auto_within_ci_of_best": [a["auto_within_ci_of_best"], b["auto_within_ci_of_best"]],
    }
    pair["success"] = bool(pair["best_fixed_differs"] and pair["a_best_on_b"]["worse"]
                           and pair["b_best_on_a"]["worse"] and all(pair["auto_within_ci_of_best"]))
    return pair


def lambda_choice(datasets: dict[str, tuple[str | Path, str | Path | None]]) -> dict[str, Any]:
    """:func:`dataset_comparison` of every dataset, whether ``auto`` is within the 95% interval of the
    best fixed lambda there (the interval of the paired difference contains 0 or lies above it), and
    the criteria of every pair of datasets (:func:`_pair`); the comparison succeeds on a pair that
    meets all of them."""
    results = {name: dataset_comparison(*where) for name, where in datasets.items()}
    for result in results.values():
        result["auto_within_ci_of_best"] = bool(result["auto_minus_best"]["student"]["high"] >= 0)
    pairs = [_pair(a, results[a], b, results[b]) for a, b in itertools.combinations(results, 2)]
    return {
        "chosen_on": f"student {CHOOSE_ON}", "reported_on": f"student {REPORT_ON}", "datasets": results,
        "pairs": pairs, "success": any(pair["success"] for pair in pairs),
    }


def _pm(value: dict[str, float]) -> str:
    return f"{value['mean']:.2f} ± {value['std']:.2f}"


def _ci(d: dict[str, float]) -> str:
    if math.isnan(d["low"]):
        return f"{d['diff']:+.2f} (n={d['n']}, no CI)"
    return f"{d['diff']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]"


def _elsewhere(other: dict[str, Any]) -> str:
    if other.get("same_best"):
        return "same lambda"
    if other.get("not_in_grid"):
        return f"{other['lambda']}: not in the grid there"
    return f"{other['lambda']}: {'worse' if other['worse'] else 'not worse'}, {_ci(other)}"


def to_markdown(summary: dict[str, Any]) -> str:
    """The tables of docs/results.md: per dataset, the grid and ``auto`` (mean ± std over seeds), the
    paired differences from the best fixed lambda, and the criteria."""
    lines = []
    for name, r in summary["datasets"].items():
        best = r["best_fixed"]
        lines += [(f"### {name} (seeds {', '.join(map(str, r['seeds']))}; best fixed lambda on student "
                  f"val_acc: {best})"), "",
                  ("| intra.weight | student val_acc | student test_acc | Δ student test_acc vs best [95% CI] "
                  "| teacher val_acc | teacher test_acc |"), "|---|---|---|---|---|---|"]
        for weight, cell in r["cells"].items():
            delta = (r["fixed_minus_best"].get(weight) if weight != AUTO else r["auto_minus_best"]["student"])
            shown = "best" if weight == str(best) else _ci(delta)
            lines.append(f"| {weight} | {_pm(cell['student_val_acc'])} | {_pm(cell['student_test_acc'])} | {shown} "
                         f"| {_pm(cell['teacher_val_acc'])} | {_pm(cell['teacher_test_acc'])} |")
        lam = r["auto_lambda"]
        if lam:
            lines += ["", (f"lambda in force with auto (epoch means, mean over seeds): first epoch "
                          f"{lam['first_epoch']:.4f}, middle {lam['middle_epoch']:.4f}, last {lam['last_epoch']:.4f}, "
                          f"mean over the run {lam['mean']:.4f}.")]
        lines += ["", f"auto minus best, teacher test_acc: {_ci(r['auto_minus_best']['teacher'])}.", ""]
        if r["kd_minus_ce_only"]:
            shown = ", ".join(f"{w} {_ci(d)}" for w, d in r["kd_minus_ce_only"].items())
            lines += [f"KD student minus the CE-only student (test_acc, paired), teacher's lambda: {shown}.", ""]
    lines += ["### Criteria", "",
              ("| datasets (A / B) | best fixed lambda | auto within the 95% CI of the best, on A / on B "
              "| A's best used on B | B's best used on A | all met |"), "|---|---|---|---|---|---|"]
    for pair in summary["pairs"]:
        (a, b), (best_a, best_b) = pair["datasets"], pair["best_fixed"]
        within = " / ".join(f"{ok} ({_ci(summary['datasets'][n]['auto_minus_best']['student'])})"
                            for ok, n in zip(pair["auto_within_ci_of_best"], (a, b), strict=True))
        lines.append(f"| {a} / {b} | {best_a} / {best_b} | {within} | {_elsewhere(pair['a_best_on_b'])} "
                     f"| {_elsewhere(pair['b_best_on_a'])} | {pair['success']} |")
    lines += ["", f"Some pair meets every criterion: {summary['success']}.", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.lambda_choice", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", action="append", required=True, nargs="+", metavar="NAME SWEEP [RUN_ROOT]",
                        help="a dataset's name, its sweep file and (default: the file's out) the folder of its "
                             "runs; repeat for every dataset")
    parser.add_argument("--out", required=True, metavar="PREFIX", help="write PREFIX.json and PREFIX.md")
    args = parser.parse_args(argv)
    if any(len(item) not in (2, 3) for item in args.dataset):
        parser.error("--dataset takes NAME SWEEP [RUN_ROOT]")
    datasets = {item[0]: (item[1], item[2] if len(item) == 3 else None) for item in args.dataset}
    try:
        summary = lambda_choice(datasets)
    except BAD_INPUT as err:  # bad input; any other exception keeps its traceback
        print(f"lambda_choice: {err}", file=sys.stderr)
        return 2
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps(summary, indent=1) + "\n")
    Path(f"{args.out}.md").write_text(to_markdown(summary))
    print(to_markdown(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
