"""No lost work: --out/--overwrite never replace an input, a run that fails before its first epoch
leaves nothing behind, --overwrite clears the previous run's files only, report survives a run that
names itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from test_guards import STUDENT, TEACHER, snapshot

from intrakd.cli import EXIT_BAD_INPUT, EXIT_NONFINITE, main
from intrakd.train.runfolder import PREVIOUS


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory) -> Path:
    """A finished teacher run of this module's own (its tests try to replace its files)."""
    out = tmp_path_factory.mktemp("teacher") / "T"
    assert main(["train-teacher", "--out", str(out), *TEACHER]) == 0
    return out

def test_distill_into_the_teachers_own_folder_is_refused(teacher_run, capsys):
    teacher = teacher_run / "checkpoints" / "last.pt"
    before = snapshot(teacher_run)
    for extra in ([], ["--overwrite"]):
        capsys.readouterr()
        assert main(["distill", "--teacher", str(teacher), "--out", str(teacher_run), *extra, *STUDENT]) == \
            EXIT_BAD_INPUT
        err = capsys.readouterr().err
        assert f"--out {teacher_run} would replace {teacher}, the teacher checkpoint this run reads" in err
        assert snapshot(teacher_run) == before


def test_a_configuration_file_in_the_generated_files_is_refused(teacher_run, capsys):
    before = snapshot(teacher_run)
    config = teacher_run / "config.yaml"
    assert main(["train-teacher", "--config", str(config), "--out", str(teacher_run), "--overwrite"]) == \
        EXIT_BAD_INPUT
    assert f"would replace {config}, the configuration file this run reads" in capsys.readouterr().err
    assert snapshot(teacher_run) == before


def test_report_of_a_run_that_names_itself_does_not_recurse(tmp_path, capsys):
    run = tmp_path / "S"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(
        {"command": "distill", "model": "digits_cnn_small", "seed": 0,
         "teacher": str(run / "checkpoints" / "last.pt")}))
    (run / "summary.json").write_text(json.dumps({"final_acc": 50.0, "best_acc": 51.0, "eval_split": "test"}))
    assert main(["report", str(run)]) == 0
    assert "50.00" in capsys.readouterr().out


def test_a_run_failing_before_its_first_epoch_leaves_nothing_and_a_rerun_works(tmp_path, capsys):
    out = tmp_path / "new" / "run"
    assert main(["train-teacher", "--out", str(out), *TEACHER, "optim.lr=1e6"]) == EXIT_NONFINITE
    assert "non-finite loss" in capsys.readouterr().err
    assert not out.exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    assert main(["train-teacher", "--out", str(kept), *TEACHER, "optim.lr=1e6"]) == EXIT_NONFINITE
    assert sorted(p.name for p in kept.iterdir()) == ["notes.txt"]
    assert main(["train-teacher", "--out", str(kept), *TEACHER]) == 0
    assert (kept / "summary.json").is_file()


def test_a_failed_overwrite_puts_the_previous_run_back(teacher_run, tmp_path, capsys):
    before = snapshot(teacher_run)
    assert main(["train-teacher", "--out", str(teacher_run), "--overwrite", *TEACHER, "optim.lr=1e6"]) == \
        EXIT_NONFINITE
    assert snapshot(teacher_run) == before
    assert not (teacher_run / PREVIOUS).exists()


def test_overwrite_removes_the_previous_runs_generated_files_only(tmp_path):
    out = tmp_path / "run"
    assert main(["train-teacher", "--out", str(out), *TEACHER]) == 0
    assert main(["plot", str(out)]) == 0
    (out / "notes.txt").write_text("mine")
    assert (out / "curves.png").is_file()
    assert main(["train-teacher", "--out", str(out), "--overwrite", *TEACHER, "seed=1"]) == 0
    assert not (out / "curves.png").exists()
    assert (out / "notes.txt").read_text() == "mine"
    assert not (out / PREVIOUS).exists()
    assert yaml.safe_load((out / "config.yaml").read_text())["seed"] == 1
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    assert "last.pt" in {p.name for p in (out / "checkpoints").iterdir()}
