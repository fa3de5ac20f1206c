"""One way to write a command: options and KEY=VALUE overrides in any order, --version, unknown
devices and values that can never work refused with exit 2, one error line under torchrun."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from intrakd import __version__
from intrakd.cli import EXIT_BAD_INPUT, main
from intrakd.config import ConfigError, TeacherConfig, load_config

QUICK = ["model=digits_cnn_small", "intra.weight=0", "device=cpu"]


def test_options_and_overrides_in_any_order(tmp_path, capsys):
    out = tmp_path / "t"
    assert main(["train-teacher", "data.dataset=digits", "--out", str(out), "optim.epochs=1", *QUICK,
                 "--vanilla"]) == 0
    assert (out / "summary.json").is_file()
    student = tmp_path / "s"
    assert main(["distill", "data.dataset=digits", "model=digits_cnn_small", "--teacher",
                 str(out / "checkpoints" / "last.pt"), "optim.epochs=1", "--out", str(student),
                 "device=cpu"]) == 0
    assert (student / "summary.json").is_file()
    spec = tmp_path / "sweep.yaml"
    spec.write_text(f"out: {tmp_path / 'sweep'}\nseeds: [0]\ncommon: {{data: {{dataset: digits}}}}\n"
                    "teacher: {grid: [{intra.weight: [0]}]}\n")
    capsys.readouterr()
    assert main(["sweep", str(spec), "optim.epochs=1", "--dry-run", "model=digits_cnn_small"]) == 0
    assert "intra.weight=0" in capsys.readouterr().out


def test_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"intrakd {__version__}"


def test_unknown_device_is_bad_input_naming_the_choices(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train-teacher", "--out", str(out), "data.dataset=digits", "device=gpu"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "unknown device 'gpu': choose auto, cpu, cuda, cuda:N" in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("rank, shown", [("0", True), ("1", False)])
def test_under_torchrun_only_rank_0_reports_a_bad_input(monkeypatch, tmp_path, capsys, rank, shown):
    monkeypatch.setenv("RANK", rank)
    assert main(["train-teacher", "--out", str(tmp_path / "r"), "data.dataset=digits", "optim.lr=-1"]) == \
        EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.strip().splitlines() == (["intrakd train-teacher: error: optim.lr must be > 0, got -1.0"]
                                        if shown else [])


def test_a_gate_that_can_never_pass_is_refused():
    never = r"intra.delta must lie in \[-1, 1\) for the probability margin \(a margin never exceeds 1"
    with pytest.raises(ConfigError, match=never):
        load_config(TeacherConfig, overrides=["intra.delta=1"])
    assert load_config(TeacherConfig, overrides=["intra.delta=1", "intra.margin=logit"]).intra.delta == 1


def test_no_training_images_is_refused(tmp_path, capsys):
    assert main(["train-teacher", "--out", str(tmp_path / "r"), "data.dataset=digits",
                 "data.train_per_class=0"]) == EXIT_BAD_INPUT
    assert "data.train_per_class must be >= 1, got 0 (or null: every training image)" in capsys.readouterr().err


def test_demo_refuses_zero_epochs_and_names_its_own_options(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "d"), "--epochs", "0"]) == EXIT_BAD_INPUT
    assert "--epochs must be >= 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
    earlier = tmp_path / "d" / "teacher_vanilla"
    earlier.mkdir(parents=True)
    (earlier / "config.yaml").write_text("command: train-teacher\n")
    assert main(["demo", "--out", str(tmp_path / "d"), "--epochs", "1"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "holds the runs of an earlier demo (teacher_vanilla): pass --overwrite" in err
    assert "--resume" not in err


def test_evaluate_with_an_unknown_device(tmp_path, capsys):
    out = tmp_path / "t"
    assert main(["train-teacher", "--out", str(out), "data.dataset=digits", "optim.epochs=1", *QUICK]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--device", "tpu0", "--checkpoint", str(out / "checkpoints" / "last.pt")]) == \
        EXIT_BAD_INPUT
    assert "unknown device 'tpu0'" in capsys.readouterr().err
    assert json.loads((out / "summary.json").read_text())["epochs"] == 1
    assert Path(out / "config.yaml").is_file()
