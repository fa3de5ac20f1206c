"""Inputs that surprised a new user (issue #26): each now gives a clear word or a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_guards import STUDENT, TEACHER

from intrakd.cli import main


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A finished one-epoch teacher and a student distilled from it."""
    root = tmp_path_factory.mktemp("surprises")
    assert main(["train-teacher", "--out", str(root / "t"), *TEACHER]) == 0
    assert main(["distill", "--out", str(root / "s"), "--teacher", str(root / "t" / "checkpoints" / "last.pt"),
                 *STUDENT]) == 0
    return {"teacher": root / "t", "student": root / "s"}


def test_a_student_checkpoint_as_teacher_is_named_as_such(runs, tmp_path, capsys):
    capsys.readouterr()
    student = runs["student"] / "checkpoints" / "last.pt"
    assert main(["distill", "--out", str(tmp_path / "s2"), "--teacher", str(student), *STUDENT]) == 0
    err = capsys.readouterr().err
    assert f"note: the teacher {student} is a student checkpoint (distilled from " in err, err


def test_stage_methods_say_which_stages_are_left_out_between_models_of_unequal_depth(capsys):
    from intrakd.models import create_model
    from intrakd.objectives.stages import probe_stage_pairs

    teacher = create_model("resnet8", num_classes=10)  # 4 stage features
    student = create_model("vgg8", num_classes=10)  # 5 stage features
    pairs = probe_stage_pairs(student, teacher, (3, 32, 32), 1, "at")
    assert len(pairs) == 3
    err = capsys.readouterr().err
    assert ("note: distill.at: the student has 5 and the teacher 4 stage features; stages 1..3 of both are paired "
            "and the student's last 1 left out") in err, err
    probe_stage_pairs(teacher, teacher, (3, 32, 32), 1, "at")
    assert "note" not in capsys.readouterr().err


@pytest.mark.parametrize(("command", "given", "model"), [
    ("train-teacher", [], "digits_cnn"), ("distill", ["teacher=t.pt"], "digits_cnn_small"),
    ("train-teacher", ["model=digits_cnn_small"], "digits_cnn_small"),
])
def test_digits_runs_get_the_datasets_default_model_unless_one_is_given(command, given, model, capsys):
    import yaml

    assert main([command, "--print-config", "data.dataset=digits", *given]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["model"] == model


def test_nan_before_anything_was_saved_says_to_run_again_not_to_resume(tmp_path, capsys):
    from intrakd.cli import EXIT_NONFINITE

    run = tmp_path / "run"
    assert main(["train-teacher", "--out", str(run), *TEACHER, "optim.lr=100000"]) == EXIT_NONFINITE
    err = capsys.readouterr().err
    assert ("The run stopped before anything was saved, so there is nothing to resume: run the same command again "
            "with a smaller optim.lr, or with train.skip_nonfinite_steps=N") in err, err
    assert "--resume" not in err


@pytest.mark.parametrize(("argv", "message"), [
    (["train-teacher", "--vanilla", "intra.weight=0.02"],
     "--vanilla means intra.weight=0, but intra.weight=0.02 is given too: drop one of them"),
    (["train-teacher", "optim.milestones=[20,10]"],
     "optim.milestones must be epochs > 0 in ascending order, got [20, 10] (e.g. optim.milestones=[100,150])"),
    (["train-teacher", "intra.weight=autox"], "intra.weight: expected a number, or 'auto', got 'autox'"),
])
def test_contradictory_or_malformed_settings_are_refused_in_words(argv, message, tmp_path, capsys):
    from intrakd.cli import EXIT_BAD_INPUT

    assert main([*argv, "--out", str(tmp_path / "run"), "data.dataset=digits"]) == EXIT_BAD_INPUT
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_run_folder_given_as_checkpoint_names_the_file_to_pass(runs, capsys):
    from intrakd.cli import EXIT_BAD_INPUT

    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(runs["teacher"])]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert f"checkpoint {runs['teacher']} is a folder: pass a checkpoint file in it, e.g. " \
           f"{runs['teacher'] / 'checkpoints' / 'last.pt'}" in err, err


def test_analyze_into_a_file_is_refused_before_the_model_runs(runs, tmp_path, capsys, monkeypatch):
    from intrakd.analysis import commands
    from intrakd.cli import EXIT_BAD_INPUT

    ran = []
    monkeypatch.setattr(commands, "predict_checkpoint", lambda *a, **k: ran.append(a))
    target = tmp_path / "analysis.json"
    target.write_text("mine")
    assert main(["analyze", "--checkpoint", str(runs["teacher"] / "checkpoints" / "last.pt"), "--out",
                 str(target)]) == EXIT_BAD_INPUT
    assert f"--out {target} is a file: analyze writes a folder" in capsys.readouterr().err
    assert not ran and target.read_text() == "mine"


def test_a_student_preset_before_its_teacher_preset_ran_says_to_train_it_first(tmp_path, capsys, monkeypatch):
    from intrakd.cli import EXIT_BAD_INPUT
    from intrakd.presets import list_presets

    monkeypatch.chdir(tmp_path)
    preset = next(p for p in list_presets("distill") if p.teacher_preset)
    assert main(["distill", "--preset", preset.name, "--data-root", str(tmp_path)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert (f"preset {preset.name} distils from the teacher that `intrakd train-teacher --preset "
            f"{preset.teacher_preset}` trains") in err and "train that teacher first" in err, err
    assert list(tmp_path.iterdir()) == []


def test_the_epoch_line_shows_the_methods_own_terms_and_lambda_under_auto(runs, tmp_path, capsys):
    teacher = runs["teacher"] / "checkpoints" / "last.pt"
    capsys.readouterr()
    assert main(["distill", "--out", str(tmp_path / "dkd"), "--teacher", str(teacher), *STUDENT,
                 "distill.method=dkd"]) == 0
    line = next(x for x in capsys.readouterr().err.splitlines() if " epoch 1/1 loss=" in x)
    assert " ce=" in line and " dkd=" in line, line
    assert main(["train-teacher", "--out", str(tmp_path / "auto"), *TEACHER, "intra.weight=auto"]) == 0
    line = next(x for x in capsys.readouterr().err.splitlines() if " epoch 1/1 loss=" in x)
    assert " intra=" in line and " lambda=" in line, line


@pytest.mark.parametrize("batch_size", [3, 5, 6, 7])
def test_skipped_images_agree_between_intro_metrics_and_summary(batch_size, tmp_path, capsys):
    import json

    from test_bad_images import args, folders

    folders(tmp_path / "data")  # 16 training images, 2 of them unreadable
    out = tmp_path / "run"
    assert main([*args(tmp_path / "data", out, "data.bad_images=skip", "optim.epochs=1",
                       f"data.batch_size={batch_size}")]) == 0
    assert ": 14 training images (2 unreadable left out), 2 classes;" in capsys.readouterr().err
    (line,) = (out / "metrics.jsonl").read_text().splitlines()
    summary = json.loads((out / "summary.json").read_text())
    assert json.loads(line)["skipped_images"] == summary["skipped_images"]


def test_report_ignores_settings_of_methods_a_student_does_not_use(tmp_path):
    import yaml

    from intrakd.analysis.runfolders import run_config

    run = tmp_path / "s"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({
        "command": "distill", "model": "resnet8", "teacher": str(tmp_path / "absent.pt"), "seed": 0,
        "distill": {"method": "kd", "ab": {"init_epochs": 30}, "dkd": {"beta": 2.0}}}))
    _, _, config = run_config(run)
    assert config["distill.method"] == "kd"
    assert not [key for key in config if key.startswith(("distill.ab.", "distill.dkd."))]


def test_a_fifo_among_the_images_is_refused_instead_of_hanging(tmp_path, capsys):
    import os

    from test_bad_images import args
    from test_imagefolder import make_image_folders

    from intrakd.cli import EXIT_BAD_INPUT

    make_image_folders(tmp_path / "data", per_class=4)
    fifo = tmp_path / "data" / "train" / "cat" / "pipe.png"
    os.mkfifo(fifo)
    out = tmp_path / "run"
    assert main(args(tmp_path / "data", out)) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "are not regular files (a FIFO, socket or device), e.g. " in err and str(fifo) in err, err
    assert not out.exists()
