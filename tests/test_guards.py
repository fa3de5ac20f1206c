"""Guarded inputs and numerical faults: each bad input gets its message and exit status, and no file
already on disk is touched; NaN/Inf losses stop the run (or are skipped) without losing a checkpoint."""

from __future__ import annotations

import errno
import json
import math
import pickle
from pathlib import Path

import pytest
import torch
from fakes import FullDisk

import intrakd.models.checkpoint as checkpoint_module
from intrakd.cli import EXIT_BAD_INPUT, EXIT_IO_ERROR, EXIT_NONFINITE, main
from intrakd.models import create_model
from intrakd.models.checkpoint import CheckpointStore, verify_checkpoint
from intrakd.objectives import IntraClassTeacherObjective
from intrakd.train import read_checkpoint
from intrakd.train.guards import NonFiniteWatch

TEACHER = ["data.dataset=digits", "model=digits_cnn_small", "optim.epochs=1", "intra.weight=0.1", "device=cpu"]
STUDENT = ["data.dataset=digits", "model=digits_cnn_small", "optim.epochs=1", "device=cpu"]


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory) -> Path:
    """A finished one-epoch teacher run."""
    out = tmp_path_factory.mktemp("teacher") / "run"
    assert main(["train-teacher", "--out", str(out), *TEACHER]) == 0
    return out


def snapshot(*roots: Path) -> dict[Path, tuple[bytes, int]]:
    """Bytes and modification time of every file under ``roots``."""
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for root in roots for p in sorted(root.rglob("*"))
            if p.is_file()}


def refused(argv: list[str], capsys, *roots: Path, status: int = EXIT_BAD_INPUT) -> str:
    """Run the CLI, expect ``status``; check nothing under ``roots`` changed; return stderr."""
    before = snapshot(*roots)
    capsys.readouterr()
    assert main(argv) == status
    assert snapshot(*roots) == before
    return capsys.readouterr().err


@pytest.mark.parametrize("override, message", [
    ("intra.wieght=0.1", "unknown config key intra.wieght; valid keys here: intra.weight, intra.temperature"),
    ("optim.lr=fast", "optim.lr: expected a number, got 'fast'"),
    ("data.batch_size=1.5", "data.batch_size: expected a whole number, got 1.5"),
    ("intra.weight=-0.01", "intra.weight must be >= 0 or auto, got -0.01"),
    ("intra.delta=1.5", ("intra.delta must lie in [-1, 1) for the probability margin (a margin never "
                          "exceeds 1, so the gate would pass nothing), got 1.5")),
    ("intra.delta=-1.01", ("intra.delta must lie in [-1, 1) for the probability margin (a margin never "
                          "exceeds 1, so the gate would pass nothing), got -1.01")),
    ("intra.temperature=0", "intra.temperature must be > 0, got 0.0"),
    ("intra.temperature=-0.1", "intra.temperature must be > 0, got -0.1"),
    ("intra.temperature=.nan", "intra.temperature must be a finite number, got nan"),
    ("intra.cache_size=0", "intra.cache_size must be >= 1, got 0 (turn the cache off with intra.cache=false)"),
    ("checkpoint.keep_last=0", "checkpoint.keep_last must be >= 1, got 0"),
    ("checkpoint.every_minutes=-1", "checkpoint.every_minutes must be >= 0, got -1.0 (0: off)"),
    ("train.skip_nonfinite_steps=-1", "train.skip_nonfinite_steps must be >= 0"),
    ("model=resnet_nope", "unknown model 'resnet_nope'; available: "),
])
def test_bad_teacher_configuration(tmp_path, capsys, override, message):
    (tmp_path / "keep.txt").write_text("a user's file")
    err = refused(["train-teacher", "--out", str(tmp_path / "run"), *TEACHER, override], capsys, tmp_path)
    assert f"intrakd train-teacher: error: {message}" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override, message", [
    ("distill.temperature=0", "distill.temperature must be > 0 (or a learned temperature: ctkd), got 0.0"),
    ("distill.kd_weight=-1", "distill.kd_weight must be >= 0, got -1.0"),
    ("distill.method=nope", "distill.method: 'nope' is not one of 'kd', 'dkd', 'crd'"),
])
def test_bad_student_configuration(tmp_path, capsys, teacher_run, override, message):
    teacher = teacher_run / "checkpoints" / "last.pt"
    err = refused(["distill", "--out", str(tmp_path / "run"), *STUDENT, f"teacher={teacher}", override], capsys,
                  tmp_path, teacher_run)
    assert f"intrakd distill: error: {message}" in err
    assert not (tmp_path / "run").exists()


def test_output_folder_holding_a_run_is_refused(teacher_run, capsys):
    err = refused(["train-teacher", "--out", str(teacher_run), *TEACHER], capsys, teacher_run)
    assert (f"{teacher_run} already holds a run (config.yaml, metrics.jsonl, summary.json, checkpoints): continue it "
            f"with --resume {teacher_run}, choose another --out, or pass --overwrite to replace it") in err


def test_resume_and_overwrite_together_are_refused(teacher_run, capsys):
    err = refused(["train-teacher", "--resume", str(teacher_run), "--overwrite"], capsys, teacher_run)
    assert "--resume continues a run and --overwrite replaces it: pass only one" in err


def test_teacher_of_another_architecture_is_refused(tmp_path, teacher_run, capsys):
    teacher = teacher_run / "checkpoints" / "last.pt"
    err = refused(["distill", "--out", str(tmp_path / "run"), *STUDENT, f"teacher={teacher}",
                   "teacher_model=digits_cnn"], capsys, tmp_path, teacher_run)
    assert f"checkpoint {teacher} holds a 'digits_cnn_small', not the requested 'digits_cnn'" in err
    bare = tmp_path / "bare.pt"
    torch.save({"model": create_model("digits_cnn_small", num_classes=10).state_dict()}, bare)
    err = refused(["distill", "--out", str(tmp_path / "run"), *STUDENT, f"teacher={bare}",
                   "teacher_model=digits_cnn"], capsys, tmp_path)
    assert f"checkpoint {bare} does not fit model 'digits_cnn': shape mismatches (checkpoint vs model): " in err
    assert not (tmp_path / "run").exists()


def test_teacher_with_another_number_of_classes_is_refused(tmp_path, capsys):
    bare = tmp_path / "seven.pt"
    torch.save({"model": create_model("digits_cnn_small", num_classes=7).state_dict()}, bare)
    err = refused(["distill", "--out", str(tmp_path / "run"), *STUDENT, f"teacher={bare}",
                   "teacher_model=digits_cnn_small"], capsys, tmp_path)
    assert f"checkpoint {bare} is a 7-class model but the data has 10 classes" in err


def test_missing_or_truncated_teacher_is_refused(tmp_path, teacher_run, capsys):
    err = refused(["distill", "--out", str(tmp_path / "run"), *STUDENT, f"teacher={tmp_path / 'none.pt'}"],
                  capsys, tmp_path)
    assert f"checkpoint {tmp_path / 'none.pt'} does not exist" in err
    cut = tmp_path / "cut.pt"
    cut.write_bytes((teacher_run / "checkpoints" / "last.pt").read_bytes()[:1000])
    err = refused(["distill", "--out", str(tmp_path / "run"), *STUDENT, f"teacher={cut}",
                   "teacher_model=digits_cnn_small"], capsys, tmp_path)
    assert f"checkpoint {cut} cannot be read" in err and "it may be truncated" in err


def cifar_args(tmp_path: Path, root: Path) -> list[str]:
    return ["train-teacher", "--out", str(tmp_path / "run"), "data.dataset=cifar100", f"data.root={root}",
            "model=resnet8x4", "device=cpu"]


def test_missing_or_empty_dataset_folder_is_refused(tmp_path, capsys):
    err = refused(cifar_args(tmp_path, tmp_path / "absent"), capsys, tmp_path)
    assert f"CIFAR-100 not found at {tmp_path / 'absent'}: expected the files 'train' and 'test'" in err
    (tmp_path / "empty").mkdir()
    err = refused(cifar_args(tmp_path, tmp_path / "empty"), capsys, tmp_path)
    assert f"CIFAR-100 not found at {tmp_path / 'empty'}" in err
    err = refused(["train-teacher", "--out", str(tmp_path / "run"), "data.dataset=cifar100"], capsys, tmp_path)
    assert "data.root is required for cifar100" in err
    assert not (tmp_path / "run").exists()


def test_unreadable_dataset_file_is_refused(tmp_path, capsys):
    folder = tmp_path / "data" / "cifar-100-python"
    folder.mkdir(parents=True)
    whole = pickle.dumps({b"data": [[0] * 3072] * 4, b"fine_labels": [0, 1, 2, 3]})
    (folder / "train").write_bytes(whole[: len(whole) // 2])
    (folder / "test").write_bytes(whole)
    err = refused(cifar_args(tmp_path, tmp_path / "data"), capsys, tmp_path)
    assert f"{folder / 'train'} is not a readable CIFAR-100 pickle (UnpicklingError" in err
    assert not (tmp_path / "run").exists()


def test_full_disk_during_a_checkpoint_keeps_the_previous_one(tmp_path, teacher_run, monkeypatch, capsys):
    run = tmp_path / "run"
    original = CheckpointStore.save
    saves = []

    def save_on_a_filling_disk(self, *args, **kwargs):
        saves.append(args[1:3])
        if len(saves) == 2:
            monkeypatch.setattr(checkpoint_module.os, "fdopen", FullDisk(5000))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(CheckpointStore, "save", save_on_a_filling_disk)
    capsys.readouterr()
    assert main(["train-teacher", "--out", str(run), *TEACHER, "checkpoint.every_steps=3"]) == EXIT_IO_ERROR
    folder = run / "checkpoints"
    first, second = folder / "ckpt-e0000-s000003.pt", folder / "ckpt-e0000-s000006.pt"
    assert (f"intrakd train-teacher: error: [Errno {errno.ENOSPC}] cannot write checkpoint {second}: No space left "
            f"on device; nothing on disk was replaced; the previous checkpoint {first} is intact (the disk is full: "
            f"free space, then continue with --resume {run})") in capsys.readouterr().err
    assert sorted(p.name for p in folder.iterdir()) == ["ckpt-e0000-s000003.pt", "ckpt-e0000-s000003.pt.sha256",
                                                        "last.pt"]
    assert verify_checkpoint(folder / "last.pt") and read_checkpoint(folder / "last.pt")["step"] == 3
    monkeypatch.undo()  # space freed
    assert main(["train-teacher", "--resume", str(run)]) == 0
    done, reference = read_checkpoint(folder / "last.pt"), read_checkpoint(teacher_run / "checkpoints" / "last.pt")
    assert all(torch.equal(v, reference["model"][k]) for k, v in done["model"].items())


def inject(monkeypatch, bad: dict[int, tuple[str, float]]) -> None:
    """Make the teacher objective's term ``name`` equal ``value`` at the (1-based) calls in ``bad``."""
    original = IntraClassTeacherObjective.forward
    calls = [0]

    def forward(self, model, batch, teacher=None):
        calls[0] += 1
        result = original(self, model, batch, teacher)
        if calls[0] in bad:
            name, value = bad[calls[0]]
            result.losses[name] = result.losses[name] * 0 + value
        return result

    monkeypatch.setattr(IntraClassTeacherObjective, "forward", forward)


def test_nan_stops_the_run_naming_step_and_term(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    inject(monkeypatch, {5: ("intra", float("nan"))})
    capsys.readouterr()
    assert main(["train-teacher", "--out", str(run), *TEACHER, "checkpoint.every_steps=2"]) == EXIT_NONFINITE
    err = capsys.readouterr().err
    good = run / "checkpoints" / "ckpt-e0000-s000004.pt"
    assert (f"intrakd train-teacher: error: non-finite loss at epoch 1, step 5/21 (global step 5): loss=nan, "
            f"intra=nan. The run stopped without saving the state this produced; its last good checkpoint is {good}. "
            f"To skip such steps, resume with: intrakd train-teacher --resume {run} "
            "train.skip_nonfinite_steps=N") in err
    assert [p.name for _, p in CheckpointStore(run / "checkpoints").history()] == ["ckpt-e0000-s000002.pt",
                                                                                   "ckpt-e0000-s000004.pt"]
    state = read_checkpoint(run / "checkpoints" / "last.pt")
    assert state["step"] == 4 and all(torch.isfinite(v).all() for v in state["model"].values())


def test_inf_beyond_the_skip_limit_stops_the_run(tmp_path, monkeypatch, capsys):
    inject(monkeypatch, {3: ("ce", float("inf")), 5: ("ce", float("inf"))})
    capsys.readouterr()
    code = main(["train-teacher", "--out", str(tmp_path / "run"), *TEACHER, "train.skip_nonfinite_steps=1"])
    assert code == EXIT_NONFINITE
    err = capsys.readouterr().err
    assert "skipped the step at epoch 1, step 3/21 (global step 3): loss=inf, ce=inf (1 of at most 1)" in err
    assert ("non-finite loss at epoch 1, step 5/21 (global step 5): loss=inf, ce=inf; that is 2 such steps, more than "
            "train.skip_nonfinite_steps=1. The run stopped") in err


def test_skipped_step_changes_nothing(tmp_path, monkeypatch):
    run = tmp_path / "run"
    inject(monkeypatch, {5: ("intra", float("nan"))})
    assert main(["train-teacher", "--out", str(run), *TEACHER, "train.skip_nonfinite_steps=2",
                 "checkpoint.every_steps=1", "checkpoint.keep_last=30"]) == 0
    before = read_checkpoint(run / "checkpoints" / "ckpt-e0000-s000004.pt")
    after = read_checkpoint(run / "checkpoints" / "ckpt-e0000-s000005.pt")
    for key in ("model", "objective"):  # weights, BN statistics, the feature cache
        assert all(torch.equal(v, after[key][k]) for k, v in before[key].items()), key
    for index, buffers in before["optimizer"]["state"].items():
        assert torch.equal(buffers["momentum_buffer"], after["optimizer"]["state"][index]["momentum_buffer"])
    assert after["skipped_steps"] == 1
    record = json.loads((run / "metrics.jsonl").read_text())
    assert record["skipped_steps"] == 1
    assert not any(math.isnan(v) for v in record.values() if isinstance(v, float))  # no NaN in the means
    assert json.loads((run / "summary.json").read_text())["skipped_steps"] == 1


def test_non_finite_watch_reports_the_first_bad_step_like_a_plain_loop():
    rng = torch.Generator().manual_seed(0)
    steps = []
    for step in range(40):
        terms = {name: torch.randn((), generator=rng) for name in ("ce", "intra", "kd")}
        if step in (17, 23):
            terms["intra"] = torch.tensor(float("nan"))
        if step in (23, 30):
            terms["ce"] = torch.tensor(float("-inf"))
        steps.append(terms)
    watch = NonFiniteWatch()
    expected = None
    for step, terms in enumerate(steps):
        watch.observe(terms, step)
        if expected is None:
            bad = {k: v.item() for k, v in terms.items() if not math.isfinite(v.item())}
            expected = (step, bad) if bad else None
        found = watch.first()
        assert (found is None) == (expected is None)
        if found is not None:
            assert found[0] == expected[0] and found[1].keys() == expected[1].keys()
    assert watch.first()[0] == 17 and math.isnan(watch.first()[1]["intra"])
