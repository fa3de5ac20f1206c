"""No run can corrupt another: one writer per run folder (a lock no killed process leaves behind),
an interrupted replacement that gives the replaced run back, and run folders that never hold or lie
in what a run reads."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_guards import STUDENT, TEACHER, snapshot

from intrakd.cli import EXIT_BAD_INPUT, main
from intrakd.train import Trainer
from intrakd.train.runfolder import LOCK, PREVIOUS

HOLD_LOCK = ("import sys, time\n"
             "from intrakd.train.runfolder import RunLock\n"
             "RunLock.acquire(sys.argv[1])\n"
             "print('locked', flush=True)\n"
             "time.sleep(120)\n")


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished one-epoch teacher run."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(["train-teacher", "--out", str(out), *TEACHER]) == 0
    return out


def hold_lock(folder: Path) -> subprocess.Popen:
    """A process holding ``folder``'s run lock (until it is killed)."""
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(folder)], stdout=subprocess.PIPE, env=env,
                              text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_second_writer_is_refused_naming_the_holder_and_a_killed_holder_blocks_nothing(finished, tmp_path,
                                                                                           capsys):
    run = tmp_path / "run"
    assert main(["train-teacher", "--out", str(run), *TEACHER]) == 0
    (run / "summary.json").unlink()  # as while a run writes it
    holder = hold_lock(run)
    try:
        before = snapshot(run)
        for argv in (["--out", str(run), "--overwrite", *TEACHER], ["--resume", str(run)]):
            capsys.readouterr()
            assert main(["train-teacher", *argv]) == EXIT_BAD_INPUT
            err = capsys.readouterr().err
            assert f"{run} is being written by another run (process id {holder.pid})" in err, err
            assert snapshot(run) == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert (run / LOCK).exists()  # left by the killed holder, locked by no one
    assert main(["train-teacher", "--out", str(run), "--overwrite", *TEACHER]) == 0
    assert not (run / LOCK).exists()  # a run removes its lock file when it ends


def test_sigint_before_the_new_run_keeps_an_epoch_puts_the_replaced_run_back(finished, tmp_path, monkeypatch,
                                                                             capsys):
    run = tmp_path / "copy"
    shutil.copytree(finished, run, symlinks=True)
    before = snapshot(run)
    original = Trainer.train_step

    def step_then_ctrl_c(self, batch):
        original(self, batch)
        if self.state.global_step == 3:
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(Trainer, "train_step", step_then_ctrl_c)
    assert main(["train-teacher", "--out", str(run), "--overwrite", *TEACHER, "optim.epochs=2"]) == 130
    err = capsys.readouterr().err
    assert f"before the new run kept an epoch: {run} holds the run it was to replace, as before" in err
    assert snapshot(run) == before
    assert not (run / PREVIOUS).exists() and not (run / LOCK).exists()


@pytest.mark.parametrize("out, message", [
    ("DATA/train/newclass", "--out {out} lies in {data}, the dataset this run reads (a run folder there"),
    ("DATA", "--out {out} is {data}, the dataset this run reads: choose an --out that holds none of the run's inputs"),
    (".", "--out {out} holds {data}, the dataset this run reads"),
])
def test_an_out_that_is_holds_or_lies_in_the_dataset_is_refused(out, message, tmp_path, capsys):
    data = tmp_path / "DATA"
    (data / "train" / "a").mkdir(parents=True)
    out = tmp_path / out
    before = sorted(tmp_path.rglob("*"))
    assert main(["train-teacher", "--out", str(out), *TEACHER, f"data.root={data}"]) == EXIT_BAD_INPUT
    assert message.format(out=out, data=data) in capsys.readouterr().err
    assert sorted(tmp_path.rglob("*")) == before


def test_an_out_in_the_teachers_checkpoints_folder_is_refused(finished, tmp_path, capsys):
    checkpoints = finished / "checkpoints"
    before = snapshot(finished)
    out = checkpoints / "student"
    assert main(["distill", "--teacher", str(checkpoints / "last.pt"), "--out", str(out), *STUDENT]) == \
        EXIT_BAD_INPUT
    assert f"--out {out} lies in {checkpoints}, the teacher's checkpoints folder this run reads" in \
        capsys.readouterr().err
    assert snapshot(finished) == before and not out.exists()


def test_resuming_a_finished_run_says_so_and_changes_nothing(finished, capsys):
    before = snapshot(finished)
    capsys.readouterr()
    assert main(["train-teacher", "--resume", str(finished)]) == 0
    out, err = capsys.readouterr()
    assert f"{finished} holds a finished run (its summary.json): nothing to continue, nothing changed" in err
    assert "resuming" not in err
    assert json.loads(out) == json.loads((finished / "summary.json").read_text())
    assert snapshot(finished) == before
