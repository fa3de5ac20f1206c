"""The report: grouping of synthetic run folders, mean +- std, paired and Welch confidence intervals."""

import csv
import io
import json
import math

import pytest
import yaml

from intrakd.analysis.comparison import build_report, difference, group_runs
from intrakd.analysis.report import to_csv, to_markdown
from intrakd.analysis.runfolders import find_runs
from intrakd.cli import main

T_975_DF2 = 4.302652729911275  # 0.975 quantile of Student's t with 2 degrees of freedom


def _write_run(folder, config, acc, test=None, pass_rate=None):
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (folder / "summary.json").write_text(json.dumps({"final_acc": acc, "best_acc": acc + 1, "eval_split": "val",
                                                     "wall_seconds": 10.0}))
    records = [{"epoch": e, "train_seconds": 2.0, "images_per_s": 100.0 * e,
                **({"pass_rate": pass_rate} if pass_rate is not None else {})} for e in (1, 2)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if test is not None:
        (folder / "eval_test.json").write_text(json.dumps({"acc": test, "ece": 0.1, "split": "test",
                                                           "per_class": {"acc": [1.0]}}))


def _teacher(weight, seed, delta=0.5):
    return {"command": "train-teacher", "model": "resnet20", "seed": seed, "device": "cpu",
            "data": {"dataset": "cifar100", "root": f"/data/{seed}"}, "intra": {"weight": weight, "delta": delta}}


@pytest.fixture
def sweep_dir(tmp_path):
    """Vanilla and enriched teachers over seeds 0-2, a student of each, one unfinished run."""
    teacher_acc = {0.0: [50.0, 52.0, 54.0], 0.02: [51.0, 54.0, 54.0]}
    student_test = {0.0: [40.0, 41.0, 45.0], 0.02: [42.0, 44.0, 46.0]}
    for weight in (0.0, 0.02):
        for seed in range(3):
            teacher_dir = tmp_path / "teachers" / f"w{weight}" / f"seed{seed}"
            _write_run(teacher_dir, _teacher(weight, seed), teacher_acc[weight][seed], pass_rate=0.5)
            student = {"command": "distill", "model": "resnet8", "seed": seed, "device": "cpu",
                       "teacher": str(teacher_dir / "checkpoints" / "last.pt"),
                       "data": {"dataset": "cifar100"}, "distill": {"temperature": 4.0}}
            _write_run(tmp_path / "students" / f"w{weight}" / f"seed{seed}", student, 30.0,
                       test=student_test[weight][seed])
    unfinished = tmp_path / "teachers" / "broken" / "seed0"
    unfinished.mkdir(parents=True)
    (unfinished / "config.yaml").write_text(yaml.safe_dump(_teacher(0.05, 0)))
    return tmp_path


def test_runs_group_by_configuration_across_seeds(sweep_dir):
    runs, unfinished = find_runs([sweep_dir])
    assert len(runs) == 12 and [p.name for p in unfinished] == ["seed0"]
    groups = group_runs(runs)
    assert [(g.kind, g.label, g.seeds) for g in groups] == [
        ("teacher", "intra.weight=0.0", [0, 1, 2]), ("teacher", "intra.weight=0.02", [0, 1, 2]),
        ("student", "teacher.intra.weight=0.0", [0, 1, 2]), ("student", "teacher.intra.weight=0.02", [0, 1, 2]),
    ]
    student = groups[2].runs[0]
    assert "teacher" not in student.config and student.config["teacher.model"] == "resnet20"
    assert student.metrics["test_acc"] == 40.0 and student.metrics["test_ece"] == 0.1
    teacher = groups[0].runs[0]
    assert teacher.metrics["val_acc"] == 50.0 and teacher.metrics["best_val_acc"] == 51.0
    assert teacher.metrics["train_s"] == 4.0 and teacher.metrics["images_per_s"] == 150.0
    assert teacher.metrics["peak_images_per_s"] == 200.0
    assert teacher.metrics["last_pass_rate"] == 0.5


def test_paired_confidence_interval(sweep_dir):
    report = build_report([sweep_dir])
    groups = report.groups
    # students: per-seed differences 2, 3, 1 -> mean 2, sd 1, half-width t(0.975, 2) / sqrt(3)
    (diff,) = report.differences[3]
    assert diff.metric == "test_acc" and diff.method == "paired" and diff.n == 3
    assert diff.diff == pytest.approx(2.0)
    half = T_975_DF2 * 1.0 / math.sqrt(3)
    assert (diff.low, diff.high) == pytest.approx((2.0 - half, 2.0 + half))
    assert diff.baseline == "teacher.intra.weight=0.0"
    # teachers are compared on their eval split: differences 1, 2, 0
    (tdiff,) = report.differences[1]
    assert tdiff.metric == "val_acc" and tdiff.diff == pytest.approx(1.0)
    assert 0 not in report.differences and 2 not in report.differences  # baselines
    assert groups[3].values("test_acc") == [42.0, 44.0, 46.0]


def test_welch_interval_when_seeds_do_not_pair(sweep_dir):
    runs, _ = find_runs([sweep_dir / "students"])
    for run in runs:
        if run.config["teacher.intra.weight"] == 0.02:
            run.seed += 10
    vanilla, enriched = group_runs(runs)
    d = difference(enriched, vanilla, "test_acc")
    assert d.method == "welch" and d.diff == pytest.approx(2.0)
    # variances 7 (40, 41, 45) and 4 (42, 44, 46): se^2 = 11/3, df = (11/3)^2 / ((7/3)^2/2 + (4/3)^2/2)
    va, vb = 7 / 3, 4 / 3
    df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 2)
    from scipy.stats import t

    half = t.ppf(0.975, df) * math.sqrt(va + vb)
    assert (d.low, d.high) == pytest.approx((2.0 - half, 2.0 + half))


def test_single_seed_has_no_interval(sweep_dir):
    runs, _ = find_runs([sweep_dir / "students" / "w0.0" / "seed0", sweep_dir / "students" / "w0.02" / "seed0"])
    vanilla, enriched = group_runs(runs)
    d = difference(enriched, vanilla, "test_acc")
    assert d.method == "n/a" and d.diff == pytest.approx(2.0) and math.isnan(d.low)


def test_markdown_and_csv(sweep_dir):
    report = build_report([sweep_dir], metrics=["test_acc", "val_acc"])
    md = to_markdown(report)
    assert "| teacher.intra.weight=0.02 | 0,1,2 | 44.00 ± 2.00 | 30.00 ± 0.00 | +2.00 [" in md
    assert "(paired, n=3)" in md and "baseline" in md and "Unfinished runs (not included): 1" in md
    rows = list(csv.DictReader(io.StringIO(to_csv(report))))
    assert len(rows) == 4
    enriched = rows[3]
    assert enriched["kind"] == "student" and float(enriched["test_acc_mean"]) == pytest.approx(44.0)
    assert float(enriched["test_acc_std"]) == pytest.approx(2.0) and enriched["test_acc_n"] == "3"
    assert float(enriched["diff_test_acc"]) == pytest.approx(2.0) and enriched["diff_test_acc_method"] == "paired"
    assert rows[0]["diff_test_acc"] == ""  # the vanilla teacher is a baseline
    assert rows[0]["test_acc_n"] == "0"  # teachers were not evaluated on test here


def test_where_filter_and_errors(sweep_dir):
    report = build_report([sweep_dir], where=["intra.weight=0.02"])
    assert [(g.kind, len(g.runs)) for g in report.groups] == [("teacher", 3), ("student", 3)]
    assert report.differences == {}  # no baseline left
    with pytest.raises(ValueError, match="no finished runs"):
        build_report([sweep_dir], where=["intra.weight=0.3"])
    with pytest.raises(ValueError, match="none of the metrics nope"):
        build_report([sweep_dir], metrics=["nope"])
    with pytest.raises(FileNotFoundError):
        build_report([sweep_dir / "missing"])


def test_report_command_writes_files(sweep_dir, tmp_path, capsys):
    prefix = tmp_path / "out" / "table"
    assert main(["report", str(sweep_dir), "--out", str(prefix), "--title", "Main", "--compare", "test_acc"]) == 0
    md = (tmp_path / "out" / "table.md").read_text()
    assert md.startswith("## Main\n") and "Δ test_acc" in md
    assert (tmp_path / "out" / "table.csv").read_text().startswith("kind,configuration,seeds,runs,")
    assert main(["report", str(sweep_dir / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_differences_follow_the_order_asked(sweep_dir):
    report = build_report([sweep_dir], metrics=["test_acc", "val_acc"], compare=["val_acc", "test_acc"])
    headers = [line for line in to_markdown(report).splitlines() if line.startswith("| configuration")]
    header = headers[-1]  # the students', evaluated on both splits
    assert header.index("Δ val_acc") < header.index("Δ test_acc")
    columns = to_csv(report).splitlines()[0].split(",")
    assert columns.index("diff_val_acc") < columns.index("diff_test_acc")


def test_result_neutral_settings_do_not_split_a_group(sweep_dir):
    """Runs that differ only in config.RESULT_NEUTRAL_KEYS (speed, checkpoints, ...) are repeats."""
    config_path = sweep_dir / "teachers" / "w0.0" / "seed1" / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config.update({"perf": {"precision": "bf16"}, "checkpoint": {"every_steps": 5}})
    config_path.write_text(yaml.safe_dump(config))
    runs, _ = find_runs([sweep_dir / "teachers"])
    assert [len(g.runs) for g in group_runs(runs)] == [3, 3]


def test_settings_newer_than_a_run_are_read_at_their_default(sweep_dir):
    """A run written before a setting existed (no ``pretrained`` or ``weights`` in its config.yaml)
    groups with runs that store that setting's default; a value other than the default splits."""
    for seed, pretrained in ((1, False), (2, True)):
        config_path = sweep_dir / "teachers" / "w0.0" / f"seed{seed}" / "config.yaml"
        config_path.write_text(yaml.safe_dump({**yaml.safe_load(config_path.read_text()),
                                               "pretrained": pretrained, "weights": None}))
    runs, _ = find_runs([sweep_dir / "teachers"])
    groups = group_runs(runs)
    assert [(g.label, g.seeds) for g in groups] == [
        ("intra.weight=0.0, pretrained=false", [0, 1]), ("intra.weight=0.0, pretrained=true", [2]),
        ("intra.weight=0.02, pretrained=false", [0, 1, 2])]


def test_paired_on_the_seeds_both_groups_hold(sweep_dir):
    """An ablation run on fewer seeds than its baseline is paired on the seeds they share."""
    runs, _ = find_runs([sweep_dir / "students"])
    runs = [r for r in runs if not (r.config["teacher.intra.weight"] == 0.02 and r.seed == 2)]
    vanilla, enriched = group_runs(runs)
    d = difference(enriched, vanilla, "test_acc")
    # seeds 0 and 1: 42 - 40 and 44 - 41 -> mean 2.5, sd 0.707, half-width t(0.975, 1) * sd / sqrt(2)
    assert (d.method, d.n, d.diff) == ("paired", 2, pytest.approx(2.5))
    from scipy.stats import t

    half = t.ppf(0.975, 1) * math.sqrt(0.5) / math.sqrt(2)
    assert (d.low, d.high) == pytest.approx((2.5 - half, 2.5 + half))
    assert difference(vanilla, enriched, "test_acc").diff == pytest.approx(-2.5)
