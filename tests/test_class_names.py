"""A checkpoint records its class names; data with other names (same count) is refused everywhere a
checkpoint meets data (issue #26, item 13): evaluate, distill, teacher-outputs, resume."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_imagefolder import make_image_folders

from intrakd.cli import main
from intrakd.models.checkpoint import check_class_names


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*")} if folder.exists() else set()


def _run(root: Path, *extra: str) -> list[str]:
    return ["data.dataset=imagefolder", f"data.root={root}", "data.workers=0", "data.image_size=16",
            "data.augment=pad_crop", "data.batch_size=4", "model=resnet8", "optim.epochs=1", "device=cpu", *extra]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """Three image-folder datasets of two classes: the teacher's, one with other names, one with the
    same names in another label order, and a teacher trained on the first."""
    root = tmp_path_factory.mktemp("names")
    make_image_folders(root / "pets", ("cat", "dog"))
    make_image_folders(root / "other", ("car", "dog"))
    make_image_folders(root / "swapped", ("dog", "cat"))
    (root / "swapped" / "train" / "dog").rename(root / "swapped" / "train" / "0_dog")
    (root / "swapped" / "train" / "cat").rename(root / "swapped" / "train" / "1_cat")
    (root / "swapped" / "val" / "dog").rename(root / "swapped" / "val" / "0_dog")
    (root / "swapped" / "val" / "cat").rename(root / "swapped" / "val" / "1_cat")
    assert main(["train-teacher", "--out", str(root / "t"), *_run(root / "pets", "intra.weight=0")]) == 0
    return {"root": root, "teacher": root / "t" / "checkpoints" / "last.pt"}


def test_the_check_names_the_first_differing_label_and_the_fix():
    check_class_names(["cat", "dog"], ["cat", "dog"], "x")
    check_class_names([], ["car", "dog"], "x")  # recorded before checkpoints kept names: the count alone
    with pytest.raises(ValueError, match=r"label 0 is 'cat' there and 'car' in the data\. Point data\.root"):
        check_class_names(["cat", "dog"], ["car", "dog"], "checkpoint c")
    with pytest.raises(ValueError, match="another order"):
        check_class_names(["cat", "dog"], ["dog", "cat"], "checkpoint c")


@pytest.mark.parametrize("other", ["other", "swapped"])
def test_evaluate_on_data_with_other_class_names_is_refused(data, other, capsys):
    assert main(["evaluate", "--checkpoint", str(data["teacher"]), "--data-root", str(data["root"] / other)]) == 2
    assert "was trained on other classes than the data's" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(data["teacher"]), "--data-root", str(data["root"] / "pets")]) == 0


@pytest.mark.parametrize("command", ["distill", "teacher-outputs"])
def test_a_teacher_of_other_classes_is_refused_and_nothing_is_written(data, command, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [command, "--out", str(out), "--teacher", str(data["teacher"]),
            *_run(data["root"] / "other", "data.in_memory=true")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"checkpoint {data['teacher']} was trained on other classes" in err, err
    assert not out.exists()


def test_resume_on_data_with_other_class_names_is_refused_and_the_run_is_untouched(data, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(data["teacher"].parent.parent, run)
    (run / "summary.json").unlink()  # a run that did not finish: resume loads its checkpoint
    before = {p: p.read_bytes() for p in _files(run) if p.is_file()}
    assert main(["train-teacher", "--resume", str(run), f"data.root={data['root'] / 'other'}"]) == 2
    assert f"the run in {run} was trained on other classes" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in _files(run) if p.is_file()} == before
