"""Consistent numbers: evaluate and analyze of one checkpoint use the same images, a student run
records its teacher's absolute path, a file of random bytes is one line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from intrakd.cli import EXIT_BAD_INPUT, main

DIGITS = ["data.dataset=digits", "model=digits_cnn_small", "optim.epochs=1", "device=cpu"]


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory) -> Path:
    """A teacher whose run evaluated on 5 images per class only."""
    out = tmp_path_factory.mktemp("teacher") / "T"
    assert main(["train-teacher", "--out", str(out), *DIGITS, "intra.weight=0", "data.eval_per_class=5"]) == 0
    return out


def test_evaluate_and_analyze_use_the_same_images(teacher_run, capsys):
    checkpoint = str(teacher_run / "checkpoints" / "last.pt")
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", checkpoint, "--device", "cpu"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert main(["analyze", "--checkpoint", checkpoint, "--device", "cpu"]) == 0
    analyzed = next(iter(json.loads(capsys.readouterr().out)["models"].values()))
    assert evaluated["split"] == analyzed["split"] == "test"
    assert evaluated["images"] == analyzed["images"] > 50  # the whole test split, not the run's 5 per class
    assert evaluated["acc"] == pytest.approx(analyzed["acc"])


def test_a_student_resumes_from_any_working_directory(teacher_run, tmp_path, monkeypatch):
    work = tmp_path / "work"
    (work / "teachers").mkdir(parents=True)
    os.symlink(teacher_run, work / "teachers" / "T")
    monkeypatch.chdir(work)
    assert main(["distill", "--teacher", "teachers/T/checkpoints/last.pt", "--out", "student", *DIGITS]) == 0
    recorded = yaml.safe_load((work / "student" / "config.yaml").read_text())["teacher"]
    assert recorded == str(work / "teachers" / "T" / "checkpoints" / "last.pt")
    monkeypatch.chdir(tmp_path)
    assert main(["distill", "--resume", str(work / "student")]) == 0


def test_random_bytes_as_a_checkpoint_is_one_line(tmp_path, capsys):
    noise = tmp_path / "noise.pt"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    assert main(["evaluate", "--checkpoint", str(noise)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"checkpoint {noise} cannot be read" in err
    assert "weights_only" not in err
