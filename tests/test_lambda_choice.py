"""The lambda-rule comparison (analysis/lambda_choice.py) on run folders with known numbers: the grid's
best is chosen on validation, auto and the other dataset's best are compared with it on test, paired."""

from __future__ import annotations

import json

import pytest
import yaml
from scipy import stats

from intrakd.analysis.lambda_choice import lambda_choice, main
from intrakd.analysis.sweep import load_sweep, plan
from intrakd.config import to_dict

SEEDS = [0, 1, 2]


def make_dataset(tmp_path, name: str, student_val: dict, student_test: dict, auto_lambda=(0.04, 0.02, 0.01)):
    """A sweep file of a grid (0.01, 0.05, auto) and finished run folders for all its jobs, whose
    student val/test accuracies are ``student_val[weight][seed]`` / ``student_test[...]``."""
    spec_path = tmp_path / f"{name}.yaml"
    spec_path.write_text(yaml.safe_dump({
        "out": str(tmp_path / name), "seeds": SEEDS,
        "common": {"data": {"dataset": "digits"}, "optim": {"epochs": 3, "milestones": [2]}},
        "teacher": {"config": {"model": "digits_cnn"}, "grid": [{"intra.weight": [0.01, 0.05, "auto"]}]},
        "student": {"config": {"model": "digits_cnn_small"}},
    }))
    for job in plan(load_sweep(spec_path)):
        weight = job.name.split("/")[0].removeprefix("intra.weight=")
        weight = weight if weight == "auto" else float(weight)
        job.out.mkdir(parents=True)
        config = {"command": "train-teacher" if job.kind == "teacher" else "distill", **to_dict(job.config)}
        (job.out / "config.yaml").write_text(yaml.safe_dump(config))
        (job.out / "summary.json").write_text(json.dumps({"eval_split": "val", "final_acc": 0, "best_acc": 0}))
        student = job.kind == "student"
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
    assert (a["best_fixed"], b["best_fixed"], summary["best_fixed_differs"]) == (0.01, 0.05, True)
    want = stats.ttest_rel([60.1, 61.2, 59.5], [60, 61, 59.5]).confidence_interval(0.95)
    got = a["auto_minus_best"]["student"]
    assert got["diff"] == pytest.approx(0.1) and (got["low"], got["high"]) == pytest.approx((want.low, want.high))
    assert a["auto_within_ci_of_best"] and not b["auto_within_ci_of_best"]
    assert a["other_best_here"]["b"]["lambda"] == 0.05 and a["other_best_here"]["b"]["diff"] == pytest.approx(-1.9667, abs=1e-3)
    assert a["other_best_here"]["b"]["worse"] and b["other_best_here"]["a"]["worse"]
    assert summary["success"] is False  # auto fails on b
    assert a["auto_lambda"] == pytest.approx({"first_epoch": 0.04, "middle_epoch": 0.02, "last_epoch": 0.01,
                                              "mean": 0.07 / 3})


def test_the_command_writes_json_and_markdown(two_datasets, tmp_path, capsys):
    (a, _), (b, _) = two_datasets["a"], two_datasets["b"]
    assert main(["--dataset", "a", str(a), "--dataset", "b", str(b), "--out", str(tmp_path / "out" / "lambda")]) == 0
    written = json.loads((tmp_path / "out" / "lambda.json").read_text())
    assert written["datasets"]["a"]["best_fixed"] == 0.01
    markdown = (tmp_path / "out" / "lambda.md").read_text()
    assert "a: auto within the 95% CI of the best fixed lambda | True" in markdown
    assert "| all of the above | False |" in markdown


def test_missing_auto_runs_are_named(tmp_path, capsys):
    spec = make_dataset(tmp_path, "a", per_seed({0.01: 70, 0.05: 68, "auto": 69}), per_seed({0.01: 60, 0.05: 58, "auto": 59}))
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
    here = summary["datasets"]["c"]["other_best_here"]["a"]
    assert here["lambda"] == 0.01 and here["diff"] < 0 < here["high"] and here["worse"] is False
    assert summary["datasets"]["c"]["auto_within_ci_of_best"] and summary["success"] is False
