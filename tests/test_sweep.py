"""Sweeps (grid, folders, skipping finished cells), and the plots and analysis of their runs."""

import json
import shutil

import pytest
import yaml

from intrakd.analysis.sweep import cell_name, describe, expand_grid, load_sweep, plan, run_sweep
from intrakd.cli import main
from intrakd.config import ConfigError

SPEC = {
    "seeds": [0, 1],
    "common": {"device": "cpu", "data": {"dataset": "digits", "train_per_class": 12, "val_per_class": 6},
               "optim": {"epochs": 2, "milestones": [1]}},
    "teacher": {"config": {"model": "digits_cnn"},
                "grid": [{"intra.weight": [0]}, {"intra.weight": [0.1], "intra.delta": [-1]}]},
    "student": {"config": {"model": "digits_cnn_small"}},
    "evaluate": ["test"],
}


def _spec_file(tmp_path, spec=SPEC, name="spec.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"out": str(tmp_path / "runs"), **spec}, sort_keys=False))
    return path


def test_grid_expansion_and_names():
    cells = expand_grid({"intra.weight": [0.01, 0.02], "intra.delta": [-1, 0.5]}, "grid")
    assert [c.name for c in cells] == ["intra.weight=0.01,intra.delta=-1", "intra.weight=0.01,intra.delta=0.5",
                                       "intra.weight=0.02,intra.delta=-1", "intra.weight=0.02,intra.delta=0.5"]
    union = expand_grid([{"intra.weight": [0]}, {"intra.cache": [False]}], "grid")
    assert [c.name for c in union] == ["intra.weight=0", "intra.cache=false"]
    assert expand_grid(None, "grid")[0].name == "base"
    assert cell_name([("optim.milestones", [1, 2]), ("teacher", "a/b")]) == "optim.milestones=[1,2],teacher=a_b"
    with pytest.raises(ConfigError, match="listed twice"):
        expand_grid([{"intra.weight": [0]}, {"intra.weight": [0]}], "grid")
    with pytest.raises(ConfigError, match="must be a non-empty list"):
        expand_grid({"intra.weight": 0.1}, "grid")


def test_spec_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown sweep key grid"):
        load_sweep(_spec_file(tmp_path, {**SPEC, "grid": {}}))
    with pytest.raises(ConfigError, match="unknown key teacher.seeds"):
        load_sweep(_spec_file(tmp_path, {**SPEC, "teacher": {"seeds": [1]}}))
    with pytest.raises(ConfigError, match="evaluate must be a list of splits"):
        load_sweep(_spec_file(tmp_path, {**SPEC, "evaluate": ["dev"]}))
    with pytest.raises(ConfigError, match="does not exist"):
        load_sweep(tmp_path / "none.yaml")
    (tmp_path / "broken.yaml").write_text("seeds: [0, 1\n")
    with pytest.raises(ConfigError, match=r"broken.yaml is not valid YAML: .* \(line 2, column 1\)"):
        load_sweep(tmp_path / "broken.yaml")
    spec = load_sweep(_spec_file(tmp_path, {**SPEC, "teacher": {"grid": {"intra.bogus": [1]}}}))
    with pytest.raises(ConfigError, match="unknown config key intra.bogus"):
        plan(spec)
    spec = load_sweep(_spec_file(tmp_path, {**SPEC, "teacher": {"grid": [{"intra.weight": [0.02]},
                                                                          {"intra.delta": [0.5]}]}}))
    with pytest.raises(ConfigError, match="are the same configuration"):
        plan(spec)


def test_extends_merges_a_parent_sweep(tmp_path):
    _spec_file(tmp_path, name="protocol.yaml")
    child = tmp_path / "child.yaml"
    child.write_text("extends: protocol.yaml\nseeds: [5]\ncommon: {optim: {epochs: 3}}\n"
                     "teacher: {grid: {intra.weight: [0.2]}}\n")
    spec = load_sweep(child)
    assert spec.seeds == [5] and [c.name for c in spec.teacher_cells] == ["intra.weight=0.2"]
    assert spec.common["optim"] == {"epochs": 3, "milestones": [1]} and spec.common["data"]["dataset"] == "digits"
    assert spec.teacher_config == {"model": "digits_cnn"} and spec.student_config == {"model": "digits_cnn_small"}
    (tmp_path / "loop.yaml").write_text("extends: loop.yaml\n")
    with pytest.raises(ConfigError, match="extends itself"):
        load_sweep(tmp_path / "loop.yaml")


def test_plan_folders_and_order(tmp_path):
    spec = load_sweep(_spec_file(tmp_path))
    jobs = plan(spec)
    runs = tmp_path / "runs"
    assert [(j.kind, j.seed, j.out.relative_to(runs).as_posix()) for j in jobs] == [
        ("teacher", 0, "teachers/intra.weight=0/seed0"), ("student", 0, "students/intra.weight=0/base/seed0"),
        ("teacher", 0, "teachers/intra.weight=0.1,intra.delta=-1/seed0"),
        ("student", 0, "students/intra.weight=0.1,intra.delta=-1/base/seed0"),
        ("teacher", 1, "teachers/intra.weight=0/seed1"), ("student", 1, "students/intra.weight=0/base/seed1"),
        ("teacher", 1, "teachers/intra.weight=0.1,intra.delta=-1/seed1"),
        ("student", 1, "students/intra.weight=0.1,intra.delta=-1/base/seed1"),
    ]
    teacher, student = jobs[2].config, jobs[3].config
    assert teacher.intra.weight == 0.1 and teacher.intra.delta == -1 and teacher.model == "digits_cnn"
    assert student.teacher == str(jobs[2].out / "checkpoints" / "last.pt") and student.model == "digits_cnn_small"
    assert student.data.train_per_class == 12 and student.optim.epochs == 2
    only = plan(spec, seeds=[3], only="*delta*", extra=["optim.epochs=1"])
    assert [(j.kind, j.seed, j.config.optim.epochs) for j in only] == [("teacher", 3, 1), ("student", 3, 1)]
    assert describe(only).endswith("0/2 finished")


def test_several_students_per_teacher_run_seeds_of_their_own(tmp_path):
    student = {**SPEC["student"], "seeds_per_teacher": 3}
    spec = load_sweep(_spec_file(tmp_path, {**SPEC, "seeds": [1], "student": student}))
    jobs = plan(spec, only="intra.weight=0")
    runs = tmp_path / "runs"
    assert [(j.kind, j.config.seed, j.out.relative_to(runs).as_posix()) for j in jobs] == [
        ("teacher", 1, "teachers/intra.weight=0/seed1"), ("student", 1, "students/intra.weight=0/base/seed1"),
        ("student", 1001, "students/intra.weight=0/base/seed1-student1"),
        ("student", 2001, "students/intra.weight=0/base/seed1-student2")]
    assert {j.config.teacher for j in jobs[1:]} == {str(jobs[0].out / "checkpoints" / "last.pt")}
    assert "todo  student seed 2001" in describe(jobs)
    for bad in (0, 1.5, True):
        with pytest.raises(ConfigError, match="seeds_per_teacher must be an integer >= 1"):
            load_sweep(_spec_file(tmp_path, {**SPEC, "student": {**student, "seeds_per_teacher": bad}}))
    with pytest.raises(ConfigError, match="drop one of the two"):
        load_sweep(_spec_file(tmp_path, {**SPEC, "student": {**student, "teacher_outputs": True}}))


def test_sweep_runs_skips_and_restarts(tmp_path):
    spec = load_sweep(_spec_file(tmp_path, {**SPEC, "seeds": [0]}))
    jobs = plan(spec, only="intra.weight=0")
    assert run_sweep(spec, jobs, log=lambda _: None) == {"skipped": 0, "ran": 2, "resumed": 0, "restarted": 0}
    for job in jobs:
        assert (job.out / "summary.json").is_file() and (job.out / "checkpoints" / "last.pt").is_file()
        evaluated = json.loads((job.out / "eval_test.json").read_text())
        assert evaluated["split"] == "test" and evaluated["images"] == 450 and 0 <= evaluated["acc"] <= 100
    (jobs[1].out / "summary.json").unlink()  # an interrupted student
    (jobs[0].out / "eval_test.json").unlink()  # an analysis not yet made
    assert run_sweep(spec, jobs, log=lambda _: None) == {"skipped": 1, "ran": 0, "resumed": 1, "restarted": 0}
    assert (jobs[1].out / "summary.json").is_file() and (jobs[0].out / "eval_test.json").is_file()
    lines = (jobs[1].out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2  # continued from its last checkpoint, not appended
    (jobs[1].out / "summary.json").unlink()  # an unfinished student of other settings cannot continue
    config = jobs[1].out / "config.yaml"
    config.write_text(config.read_text().replace("lr: 0.05", "lr: 0.07"))
    shutil.rmtree(jobs[1].out / "checkpoints")
    assert run_sweep(spec, jobs, log=lambda _: None) == {"skipped": 1, "ran": 0, "resumed": 0, "restarted": 1}
    assert len((jobs[1].out / "metrics.jsonl").read_text().splitlines()) == 2  # started again from scratch
    assert "lr: 0.05" in config.read_text()
    before = {path: path.stat().st_mtime_ns for path in tmp_path.rglob("*") if path.is_file()}
    with pytest.raises(ConfigError, match=r"other settings \(optim.lr: 0.05 -> 0.1\).*another --out"):
        run_sweep(spec, plan(spec, only="intra.weight=0", extra=["optim.lr=0.1"]), log=lambda _: None)
    assert {path: path.stat().st_mtime_ns for path in tmp_path.rglob("*") if path.is_file()} == before
    neutral = plan(spec, only="intra.weight=0", extra=["data.eval_batch_size=7", "checkpoint.keep_last=1"])
    assert run_sweep(spec, neutral, log=lambda _: None)["skipped"] == 2
    try:
        import tensorboard  # noqa: F401  (an optional extra)
    except ImportError:
        return
    events = list((jobs[0].out / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0


def test_sweep_report_plot_and_analyze_commands(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    spec = _spec_file(tmp_path)
    assert main(["sweep", str(spec), "--seeds", "0", "--dry-run"]) == 0
    assert "0/4 finished" in capsys.readouterr().out
    assert main(["sweep", str(spec), "--seeds", "0"]) == 0
    assert "4 run, 0 continued, 0 restarted, 0 already finished" in capsys.readouterr().err
    assert main(["sweep", str(spec), "--seeds", "0"]) == 0
    assert "0 run, 0 continued, 0 restarted, 4 already finished" in capsys.readouterr().err
    assert (tmp_path / "runs" / "sweep-spec.yaml").is_file()

    runs = tmp_path / "runs"
    vanilla = runs / "teachers" / "intra.weight=0" / "seed0"
    enriched = runs / "teachers" / "intra.weight=0.1,intra.delta=-1" / "seed0"
    assert main(["report", str(runs), "--out", str(tmp_path / "report")]) == 0
    assert "teacher.intra.weight=0.1" in (tmp_path / "report.md").read_text()

    curves = tmp_path / "curves.png"
    assert main(["plot", str(vanilla), str(enriched), "--out", str(curves)]) == 0
    assert curves.stat().st_size > 10_000
    capsys.readouterr()

    out = tmp_path / "analysis"
    assert main(["analyze", "--checkpoint", str(vanilla / "checkpoints" / "last.pt"), "--compare",
                 str(enriched / "checkpoints" / "last.pt"), "--names", "vanilla", "enriched",
                 "--out", str(out), "--tsne-points", "120", "--tsne-classes", "5"]) == 0
    printed = json.loads(capsys.readouterr().out.split("written:")[0])
    assert set(printed["models"]) == {"vanilla", "enriched"} and "soft_entropy" in printed["difference"]
    agreement = printed["agreement"]
    shares = ("both_correct", "only_first_correct", "only_second_correct", "both_wrong")
    assert agreement["images"] == printed["models"]["vanilla"]["images"] and sum(agreement[k] for k in shares) == 1.0
    assert agreement["acc_second"] == printed["models"]["enriched"]["acc"]
    saved = json.loads((out / "analysis.json").read_text())
    assert len(saved["models"]["vanilla"]["per_class"]["intra_class_distance"]) == 10
    for name in ("embedding_tsne", "distances", "soft_labels", "reliability", "per_class"):
        assert (out / f"{name}.png").stat().st_size > 10_000, name
    assert main(["analyze", "--checkpoint", str(vanilla / "checkpoints" / "last.pt"), "--split", "val",
                 "--no-plots", "--out", str(tmp_path / "val")]) == 0
    assert json.loads((tmp_path / "val" / "analysis.json").read_text())["models"]["seed0"]["images"] == 60
    assert main(["plot", str(tmp_path)]) == 2


def test_short_names_tell_runs_apart():
    from pathlib import Path

    from intrakd.analysis.commands import short_names

    assert short_names([Path("/r/a/seed0"), Path("/r/b/seed0")]) == ["a/seed0", "b/seed0"]
    assert short_names([Path("/r/a/seed0"), Path("/r/a/seed1")]) == ["seed0", "seed1"]


def test_a_sweep_to_a_relative_out_continues_from_the_same_directory(tmp_path, monkeypatch, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({**SPEC, "seeds": [0], "evaluate": [],
                                    "teacher": {"config": {"model": "digits_cnn"}, "grid": {"intra.weight": [0]}},
                                    "common": {**SPEC["common"], "optim": {"epochs": 1, "milestones": [1]}}}))
    monkeypatch.chdir(tmp_path)
    assert main(["sweep", "spec.yaml", "--out", "sw"]) == 0
    capsys.readouterr()
    for extra in (["--dry-run"], []):
        assert main(["sweep", "spec.yaml", "--out", "sw", *extra]) == 0, capsys.readouterr().err
    assert "2/2 finished" in capsys.readouterr().out


def test_a_sweep_stopped_by_ctrl_c_continues_the_stopped_run_when_run_again(tmp_path, monkeypatch, capsys):
    import signal

    from intrakd.train import Trainer

    spec = _spec_file(tmp_path, {**SPEC, "seeds": [0], "student": None, "evaluate": [],
                                 "teacher": {"config": {"model": "digits_cnn"}, "grid": {"intra.weight": [0]}}})
    original = Trainer.train_step

    def step_then_ctrl_c(self, batch):
        original(self, batch)
        if self.state.global_step == 1:
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(Trainer, "train_step", step_then_ctrl_c)
    assert main(["sweep", str(spec)]) == 130
    assert "or run this sweep again: it continues this run" in capsys.readouterr().err
    monkeypatch.setattr(Trainer, "train_step", original)
    assert main(["sweep", str(spec)]) == 0
    err = capsys.readouterr().err
    assert "0 run, 1 continued, 0 restarted" in err and "from" in err and "ckpt-e0001-s000001.pt" in err


def test_a_student_teachers_filter_that_matches_no_teacher_cell_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"student.teachers 'intra.weight=0.5' matches no teacher cell; the cells "
                                          r"are intra.weight=0, intra.weight=0.1,intra.delta=-1"):
        load_sweep(_spec_file(tmp_path, {**SPEC, "student": {"teachers": ["intra.weight=0", "intra.weight=0.5"]}}))
