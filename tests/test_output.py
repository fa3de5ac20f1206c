"""The output contract: messages and progress on stderr, stdout only what a command is asked to print,
one JSON document with ``--json``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_guards import TEACHER

from intrakd.cli import main


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("output") / "run"


def test_a_run_prints_only_its_summary_on_stdout_and_epoch_lines_on_stderr(run, capsys):
    assert main(["train-teacher", "--out", str(run), "--json", *TEACHER]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)  # the whole of stdout is one JSON document
    assert summary["epochs"] == 1
    assert "epoch 1/1 loss=" in captured.err and "epoch 1/1" not in captured.out


@pytest.mark.parametrize("argv", [
    ["models"], ["models", "--timm", "resnet1*"], ["presets"], ["presets", "cifar100/resnet56"], ["methods"],
])
def test_listing_commands_give_one_json_document(argv, capsys):
    if argv[:2] == ["models", "--timm"]:
        pytest.importorskip("timm")
    if argv[0] == "presets" and len(argv) == 2:
        from intrakd.presets import all_presets

        argv = ["presets", next(iter(all_presets()))]
    assert main([*argv, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)


def test_evaluate_json_is_one_document(run, capsys):
    if not (run / "summary.json").exists():
        assert main(["train-teacher", "--out", str(run), *TEACHER]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(run / "checkpoints" / "last.pt"), "--device", "cpu", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] > 0


@pytest.mark.parametrize("command", ["train-teacher", "distill", "teacher-outputs"])
def test_print_config_prints_the_resolved_yaml_and_runs_nothing(command, tmp_path, capsys, monkeypatch):
    import yaml

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "never"
    argv = [command, "--print-config", "--out", str(out), *TEACHER[:2], "optim.epochs=7"]
    if command != "train-teacher":
        argv += ["--teacher", "t.pt"]
    assert main(argv) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["command"] == command and printed["optim"]["epochs"] == 7
    assert printed["model"] == "digits_cnn_small"
    assert list(tmp_path.iterdir()) == []  # nothing written
