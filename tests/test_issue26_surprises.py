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
