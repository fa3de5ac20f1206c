"""The lambda-rule comparison (experiments/lambda_choice.py) on run folders with known numbers: the grid's
best is chosen on validation, auto and the other dataset's best are compared with it on test, paired."""

from __future__ import annotations

import json

import pytest
import yaml
from scipy import stats

from experiments.lambda_choice import lambda_choice, main, to_markdown
from intrakd.analysis.sweep import load_sweep, plan
from intrakd.config import to_dict

SEEDS = [0, 1, 2]


def make_dataset(tmp_path, name: str, student_val: dict, student_test: dict, auto_lambda=(0.04, 0.02, 0.01),
                 grid=(0.01, 0.05), ce_only_test=None):
    """A sweep file of a grid (``grid`` and auto) and finished run folders for all its jobs, whose
    student val/test accuracies are ``student_val[weight][seed]`` / ``student_test[...]``; with
    ``ce_only_test``, also the student model trained alone, with these test accuracies."""
    spec_path = tmp_path / f"{name}.yaml"
    teacher_grid = [{"intra.weight": [*grid, "auto"]}]
    if ce_only_test:
        teacher_grid.append({"model": ["digits_cnn_small"], "views": [1], "intra.weight": [0]})
    spec_path.write_text(yaml.safe_dump({
        "out": str(tmp_path / name), "seeds": SEEDS,
        "common": {"data": {"dataset": "digits"}, "optim": {"epochs": 3, "milestones": [2]}},
        "teacher": {"config": {"model": "digits_cnn"}, "grid": teacher_grid},
        "student": {"config": {"model": "digits_cnn_small"},
                    "teachers": [f"intra.weight={w}" for w in (*grid, "auto")]},
    }))
    if ce_only_test:  # read as a student's figures (weight 0)
        student_val, student_test = {**student_val, 0: [0.0] * len(SEEDS)}, {**student_test, 0: ce_only_test}
    for job in plan(load_sweep(spec_path)):
        weight = job.name.split("/")[0].split("intra.weight=")[1].split(",")[0]
        weight = weight if weight == "auto" else float(weight)
        job.out.mkdir(parents=True)
        config = {"command": "train-teacher" if job.kind == "teacher" else "distill", **to_dict(job.config)}
        (job.out / "config.yaml").write_text(yaml.safe_dump(config))
        (job.out / "summary.json").write_text(json.dumps({"eval_split": "val", "final_acc": 0, "best_acc": 0}))
        student = job.kind == "student" or weight == 0
        val = student_val[weight][job.seed] if student else 80.0 + job.seed
        test = student_test[weight][job.seed] if student else 79.0 + job.seed
        (job.out / "eval_val.json").write_text(json.dumps({"acc": val}))
        (job.out / "eval_test.json").write_text(json.dumps({"acc": test}))
        records = [{"epoch": e + 1, "lambda": auto_lambda[e]} if weight == "auto" and not student else {"epoch": e + 1}
                   for e in range(3)]
        (job.out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return spec_path


def per_seed(base: dict) -> dict:
    return {w: [v + d for d in (0.0, 1.0, -0.5)] for w, v in base.items()}


@pytest.fixture
def two_datasets(tmp_path):
    # dataset a: 0.01 best on val, 0.05 worse on test by 2, auto like the best (+0.1)
    a = make_dataset(tmp_path, "a", per_seed({0.01: 70, 0.05: 68, "auto": 69}),
                     {0.01: [60, 61, 59.5], 0.05: [58, 59.2, 57.4], "auto": [60.1, 61.2, 59.5]})
    # dataset b: 0.05 best on val; 0.01 worse on test; auto clearly worse
    b = make_dataset(tmp_path, "b", per_seed({0.01: 50, 0.05: 52, "auto": 51}),
                     {0.01: [40, 41, 39], 0.05: [42, 43, 41.5], "auto": [39, 40, 38.6]})
    return {"a": (a, None), "b": (b, None)}


def test_best_is_chosen_on_validation_and_compared_on_test(two_datasets):
    summary = lambda_choice(two_datasets)
    a, b = summary["datasets"]["a"], summary["datasets"]["b"]
    (pair,) = summary["pairs"]
    assert (a["best_fixed"], b["best_fixed"]) == (0.01, 0.05) and pair["best_fixed_differs"]
    want = stats.ttest_rel([60.1, 61.2, 59.5], [60, 61, 59.5]).confidence_interval(0.95)
    got = a["auto_minus_best"]["student"]
    assert got["diff"] == pytest.approx(0.1) and (got["low"], got["high"]) == pytest.approx((want.low, want.high))
    assert a["auto_within_ci_of_best"] and not b["auto_within_ci_of_best"]
    b_best_on_a = pair["b_best_on_a"]
    assert b_best_on_a["lambda"] == 0.05 and b_best_on_a["diff"] == pytest.approx(-1.9667, abs=1e-3)
    assert b_best_on_a["worse"] and pair["a_best_on_b"]["worse"]
    assert pair["auto_within_ci_of_best"] == [True, False]
    assert pair["success"] is False and summary["success"] is False  # auto fails on b
    assert a["auto_lambda"] == pytest.approx({"first_epoch": 0.04, "middle_epoch": 0.02, "last_epoch": 0.01,
                                              "mean": 0.07 / 3})


def test_the_command_writes_json_and_markdown(two_datasets, tmp_path, capsys):
    (a, _), (b, _) = two_datasets["a"], two_datasets["b"]
    assert main(["--dataset", "a", str(a), "--dataset", "b", str(b), "--out", str(tmp_path / "out" / "lambda")]) == 0
    written = json.loads((tmp_path / "out" / "lambda.json").read_text())
    assert written["datasets"]["a"]["best_fixed"] == 0.01
    markdown = (tmp_path / "out" / "lambda.md").read_text()
    assert "| a / b | 0.01 / 0.05 | True (+0.10 [" in markdown and "| 0.01: worse, -2.17 [" in markdown
    assert "Some pair meets every criterion: False." in markdown


def test_missing_auto_runs_are_named(tmp_path, capsys):
    spec = make_dataset(tmp_path, "a", per_seed({0.01: 70, 0.05: 68, "auto": 69}),
                        per_seed({0.01: 60, 0.05: 58, "auto": 59}))
    for folder in (tmp_path / "a" / "students").glob("intra.weight=auto/base/seed*"):
        (folder / "summary.json").unlink()
    assert main(["--dataset", "a", str(spec), "--out", str(tmp_path / "x")]) == 2
    assert "needs students of intra.weight=auto" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_another_best_counts_as_worse_only_when_its_interval_is_below_zero(tmp_path, two_datasets):
    """Dataset c prefers 0.05 on validation, but on test 0.01 is worse on two seeds and better on one:
    a mean below 0 with an interval that spans 0 is not "worse"."""
    c = make_dataset(tmp_path, "c", per_seed({0.01: 50, 0.05: 52, "auto": 51}),
                     {0.01: [40, 43, 39], 0.05: [42, 41, 41.5], "auto": [42, 41, 41.5]})
    summary = lambda_choice({"a": two_datasets["a"], "c": (c, None)})
    (pair,) = summary["pairs"]
    here = pair["a_best_on_b"]
    assert here["lambda"] == 0.01 and here["diff"] < 0 < here["high"] and here["worse"] is False
    assert summary["datasets"]["c"]["auto_within_ci_of_best"] and summary["success"] is False


def test_a_pair_that_meets_every_criterion_is_a_success_and_other_pairs_do_not_hide_it(tmp_path, two_datasets):
    """a and d: bests 0.01 and 0.05, each resolvably worse on the other, auto like the best on both;
    b (auto fails there) is in the comparison too; e has the same best as a (so d and e succeed too)."""
    d = make_dataset(tmp_path, "d", per_seed({0.01: 50, 0.05: 52, "auto": 51}),
                     {0.01: [40, 41, 39], 0.05: [42, 43, 41.5], "auto": [42.2, 42.9, 41.5]})
    e = make_dataset(tmp_path, "e", per_seed({0.01: 52, 0.05: 50, "auto": 51}),
                     per_seed({0.01: 42, 0.05: 40, "auto": 42}))
    summary = lambda_choice({**two_datasets, "d": (d, None), "e": (e, None)})
    pairs = {tuple(p["datasets"]): p for p in summary["pairs"]}
    assert len(pairs) == 6 and summary["success"] is True
    assert [names for names, p in pairs.items() if p["success"]] == [("a", "d"), ("d", "e")]
    assert pairs[("a", "e")]["a_best_on_b"] == {"lambda": 0.01, "same_best": True, "worse": False}
    assert "| a / e | 0.01 / 0.01 |" in to_markdown(summary) and "| same lambda |" in to_markdown(summary)


def test_a_best_missing_from_the_other_grid_is_named(tmp_path, two_datasets):
    f = make_dataset(tmp_path, "f", per_seed({0.05: 50, 0.2: 52, "auto": 51}),
                     per_seed({0.05: 40, 0.2: 42, "auto": 42}), grid=(0.05, 0.2))
    (pair,) = lambda_choice({"a": two_datasets["a"], "f": (f, None)})["pairs"]
    assert pair["best_fixed"] == [0.01, 0.2] and pair["success"] is False
    assert pair["b_best_on_a"] == {"lambda": 0.2, "not_in_grid": True, "worse": False}
    assert pair["a_best_on_b"] == {"lambda": 0.01, "not_in_grid": True, "worse": False}


def test_kd_students_are_compared_with_the_ce_only_student_when_the_sweep_trains_one(tmp_path, two_datasets):
    assert lambda_choice(two_datasets)["datasets"]["a"]["kd_minus_ce_only"] == {}  # none trained
    g = make_dataset(tmp_path, "g", per_seed({0.01: 50, 0.05: 52, "auto": 51}),
                     {0.01: [40, 41, 39], 0.05: [42, 43, 41.5], "auto": [42, 42, 41]}, ce_only_test=[39, 40, 39])
    summary = lambda_choice({"g": (g, None)})
    kd = summary["datasets"]["g"]["kd_minus_ce_only"]
    assert sorted(kd) == ["0.01", "0.05", "auto"]
    assert kd["0.05"]["diff"] == pytest.approx(2.8333, abs=1e-3) and kd["0.01"]["diff"] == pytest.approx(2 / 3)
    want = stats.ttest_rel([42, 43, 41.5], [39, 40, 39]).confidence_interval(0.95)
    assert (kd["0.05"]["low"], kd["0.05"]["high"]) == pytest.approx((want.low, want.high))
    assert summary["datasets"]["g"]["best_fixed"] == 0.05  # the CE-only run is not a cell of the grid
    assert ("KD student minus the CE-only student (test_acc, paired), teacher's lambda: 0.01 +0.67 ["
            in to_markdown(summary))
