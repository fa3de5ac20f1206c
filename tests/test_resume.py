"""Exact resume: runs killed (SIGKILL), stopped (SIGTERM, SIGINT) or crashed at random moments and
continued with ``--resume`` end bit for bit as an uninterrupted run."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from intrakd.cli import main
from intrakd.config import TeacherConfig, load_config, to_dict
from intrakd.data import load_digits_splits
from intrakd.models.checkpoint import CheckpointStore
from intrakd.train import Trainer, read_checkpoint

SRC = Path(__file__).resolve().parents[1] / "src"
TEACHER = ["data.dataset=digits", "model=digits_cnn_small", "optim.epochs=3", "optim.milestones=[2]",
           "intra.weight=0.1", "device=cpu"]
STEPS_PER_EPOCH = 1347 // 64  # digits: 1,347 training images, batch 64
TOTAL_STEPS = 3 * STEPS_PER_EPOCH
TIMING = ("images_per_s", "train_seconds")


def cli_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "OMP_NUM_THREADS": "1"}


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "intrakd", *args]


def metric_records(run: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock fields (those differ between any two runs)."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]


def assert_same_run(a: Path, b: Path) -> None:
    """Same final weights, objective state (the feature cache), optimiser state, metrics, summary."""
    sa, sb = read_checkpoint(a / "checkpoints" / "last.pt"), read_checkpoint(b / "checkpoints" / "last.pt")
    for key in ("model", "objective"):
        assert sa[key].keys() == sb[key].keys()
        for name, tensor in sa[key].items():
            assert torch.equal(tensor, sb[key][name]), f"{key}.{name} differs"
    for index, state in sa["optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"], sb["optimizer"]["state"][index]["momentum_buffer"])
    assert (sa["epoch"], sa["step"], sa["global_step"]) == (sb["epoch"], sb["step"], sb["global_step"])
    assert metric_records(a) == metric_records(b)
    summary_a, summary_b = (json.loads((r / "summary.json").read_text()) for r in (a, b))
    assert (summary_a["final_acc"], summary_a["best_acc"]) == (summary_b["final_acc"], summary_b["best_acc"])


def crash_then_resume(monkeypatch, command: str, run: Path, args: list[str], step: int) -> None:
    """``intrakd COMMAND --out RUN ARGS``, crashed by an exception in the training loop when it
    reaches global ``step``, then ``--resume``d to its end."""

    class Crash(Exception):
        pass

    original = Trainer.train_step

    def crash_at_step(self, batch):
        if self.state.global_step == step:
            raise Crash
        original(self, batch)

    monkeypatch.setattr(Trainer, "train_step", crash_at_step)
    with pytest.raises(Crash):
        main([command, "--out", str(run), *args])
    monkeypatch.setattr(Trainer, "train_step", original)
    assert main([command, "--resume", str(run)]) == 0


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted teacher run (in this process: one thread gives the same bits as the
    subprocesses, which the kill test checks)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    assert main(["train-teacher", "--out", str(out), *TEACHER]) == 0
    assert len(metric_records(out)) == 3
    return out


def wait_for_step(run: Path, step: int, proc: subprocess.Popen) -> None:
    """Poll until a checkpoint at or after global ``step`` exists (or the process ends)."""
    deadline = time.monotonic() + 180
    while newest_step(run) < step and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)


def newest_step(run: Path) -> int:
    """Global step of the newest checkpoint in a run folder (-1: none yet)."""
    history = CheckpointStore(run / "checkpoints").history()
    return max((e * STEPS_PER_EPOCH + s for (e, s), _ in history), default=-1)


def test_sigkill_at_random_moments_then_resume_is_bit_exact(tmp_path, reference, capsys):
    rng = random.Random(20250926)
    run = tmp_path / "run"
    targets = sorted(rng.sample(range(1, TOTAL_STEPS - 8), 3))
    command = cli("train-teacher", "--out", str(run), *TEACHER, "checkpoint.every_steps=1")
    log = tmp_path / "stderr.txt"
    for target in targets:
        with log.open("a") as err:
            proc = subprocess.Popen(command, env=cli_env(), stdout=subprocess.DEVNULL, stderr=err)
        wait_for_step(run, target, proc)
        time.sleep(rng.uniform(0.0, 0.03))  # lands in a step, an evaluation or a checkpoint write
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL, f"the run ended before the kill after step {target}"
        command = cli("train-teacher", "--resume", str(run))
    capsys.readouterr()
    assert main(["train-teacher", "--resume", str(run)]) == 0
    resumed = [line for line in log.read_text().splitlines() + capsys.readouterr().err.splitlines()
               if line.startswith("resuming")]
    assert len(resumed) == 3 and all(f"resuming {run} from {run}/checkpoints/ckpt-e" in x for x in resumed), resumed
    assert_same_run(reference, run)


def test_sigterm_saves_mid_epoch_and_exits_143_then_resumes_exactly(tmp_path, reference):
    run = tmp_path / "run"
    proc = subprocess.Popen(cli("train-teacher", "--out", str(run), *TEACHER, "checkpoint.every_minutes=0"),
                            env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for_step(run, STEPS_PER_EPOCH, proc)
    time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert "stopped by SIGTERM in epoch 2 after step" in stderr
    assert f"Continue with: intrakd train-teacher --resume {run}" in stderr
    (epoch, step), saved = CheckpointStore(run / "checkpoints").history()[-1]
    assert f"state saved in {saved}" in stderr
    assert (epoch, step) > (1, 0)  # written on the signal, mid-epoch (no periodic checkpoints here)
    assert main(["train-teacher", "--resume", str(run)]) == 0
    assert_same_run(reference, run)


def test_sigint_in_process_saves_exits_130_and_resumes_exactly(tmp_path, reference, monkeypatch, capsys):
    run = tmp_path / "run"
    original = Trainer.train_step

    def step_then_ctrl_c(self, batch):
        original(self, batch)
        if self.state.global_step == 30:
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(Trainer, "train_step", step_then_ctrl_c)
    assert main(["train-teacher", "--out", str(run), *TEACHER]) == 130
    assert "stopped by SIGINT in epoch 2 after step 10/21" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    assert CheckpointStore(run / "checkpoints").history()[-1][1].name == "ckpt-e0001-s000010.pt"
    monkeypatch.setattr(Trainer, "train_step", original)
    assert main(["train-teacher", "--resume", str(run)]) == 0
    assert_same_run(reference, run)


def test_resume_skips_a_truncated_newest_checkpoint(tmp_path, reference, monkeypatch, capsys):
    run = tmp_path / "run"

    class Crash(Exception):
        pass

    original = Trainer.train_step

    def crash_at_step_40(self, batch):
        if self.state.global_step == 40:
            raise Crash
        original(self, batch)

    monkeypatch.setattr(Trainer, "train_step", crash_at_step_40)
    with pytest.raises(Crash):
        main(["train-teacher", "--out", str(run), *TEACHER, "checkpoint.every_steps=7"])
    monkeypatch.setattr(Trainer, "train_step", original)
    history = CheckpointStore(run / "checkpoints").history()
    assert [p.name for _, p in history][-2:] == ["ckpt-e0001-s000007.pt", "ckpt-e0001-s000014.pt"]
    newest = history[-1][1]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 3])
    capsys.readouterr()
    assert main(["train-teacher", "--resume", str(run)]) == 0
    err = capsys.readouterr().err
    assert f"skipped a damaged checkpoint: checkpoint {newest} is corrupt" in err
    assert f"resuming {run} from {history[-2][1]}" in err
    assert_same_run(reference, run)


def test_resume_refuses_a_changed_configuration_and_touches_nothing(tmp_path, reference, capsys):
    before = {p: p.read_bytes() for p in reference.rglob("*") if p.is_file()}
    code = main(["train-teacher", "--resume", str(reference), "optim.lr=0.1", "intra.delta=0.3"])
    assert code == 2
    err = capsys.readouterr().err
    assert "configuration differs from the run's in intra.delta: 0.5 -> 0.3; optim.lr: 0.05 -> 0.1" in err
    assert {p: p.read_bytes() for p in reference.rglob("*") if p.is_file()} == before


def test_resume_refuses_a_distill_run_and_a_missing_run(tmp_path, reference, capsys):
    assert main(["distill", "--resume", str(reference)]) == 2
    assert f"holds a 'train-teacher' run: resume it with intrakd train-teacher --resume {reference}" in \
        capsys.readouterr().err
    assert main(["train-teacher", "--resume", str(tmp_path / "nothing")]) == 2
    assert "holds no run to resume (no config.yaml)" in capsys.readouterr().err
    assert not (tmp_path / "nothing").exists()


def test_distill_crashed_and_resumed_equals_uninterrupted(tmp_path, reference, monkeypatch):
    teacher = reference / "checkpoints" / "last.pt"
    student = ["data.dataset=digits", "model=digits_cnn_small", "optim.epochs=2", "optim.milestones=[1]",
               "device=cpu", f"teacher={teacher}", "checkpoint.every_steps=5"]
    assert main(["distill", "--out", str(tmp_path / "straight"), *student]) == 0
    crash_then_resume(monkeypatch, "distill", tmp_path / "crashed", student, step=27)
    assert_same_run(tmp_path / "straight", tmp_path / "crashed")


def test_resumed_distill_refuses_a_changed_teacher(tmp_path, reference, capsys):
    teacher = tmp_path / "teacher.pt"
    teacher.write_bytes((reference / "checkpoints" / "last.pt").read_bytes())
    run = tmp_path / "student"
    args = ["data.dataset=digits", "model=digits_cnn_small", "optim.epochs=1", "device=cpu", f"teacher={teacher}"]
    assert main(["distill", "--out", str(run), *args]) == 0
    state = torch.load(teacher, weights_only=True)
    state["model"]["fc.bias"] += 1.0
    torch.save(state, teacher)
    (run / "summary.json").unlink()  # an unfinished run (a finished one has nothing to continue)
    capsys.readouterr()
    assert main(["distill", "--resume", str(run)]) == 2
    assert "its inputs changed since it started (teacher_sha256:" in capsys.readouterr().err


def test_tensor_batches_started_mid_epoch_yield_the_rest_of_the_epoch():
    train, _ = load_digits_splits()
    batches = train.train_batches(64, 2, seed=3, device=torch.device("cpu"))
    batches.set_epoch(4)
    full = list(batches)
    batches.set_epoch(4, start=13)
    tail = list(batches)
    assert len(tail) == len(full) - 13
    for a, b in zip(full[13:], tail):
        assert torch.equal(a.labels, b.labels)
        assert all(torch.equal(x, y) for x, y in zip(a.views, b.views))
    batches.set_epoch(5)
    assert not torch.equal(next(iter(batches)).labels, full[0].labels)
    with pytest.raises(ValueError, match="start batch 22 is outside 0..21"):
        batches.set_epoch(4, start=22)


def test_checkpoint_holds_the_whole_training_state(tmp_path, reference):
    state = read_checkpoint(reference / "checkpoints" / "last.pt")
    assert {"model", "objective", "optimizer", "scheduler", "rng", "meter", "metrics_lines", "best_acc", "epoch",
            "step", "global_step", "config", "provenance"} <= state.keys()
    assert state["objective"]["cache.features"].shape == (10, 64, 16)
    assert (state["epoch"], state["step"], state["global_step"]) == (3, 0, TOTAL_STEPS)
    assert state["config"] == to_dict(load_config(TeacherConfig, overrides=TEACHER))
    assert len(state["rng"]) == 1 and {"python", "numpy", "torch", "cuda"} <= state["rng"][0].keys()


def test_crash_between_metrics_line_and_checkpoint_leaves_no_duplicate_line(tmp_path, reference, monkeypatch):
    run = tmp_path / "run"

    class Crash(Exception):
        pass

    original = Trainer.save_checkpoint

    def crash_at_the_end_of_epoch_2(self, best=False):
        if (self.state.epoch, self.state.step) == (2, 0):
            raise Crash
        return original(self, best)

    monkeypatch.setattr(Trainer, "save_checkpoint", crash_at_the_end_of_epoch_2)
    with pytest.raises(Crash):
        main(["train-teacher", "--out", str(run), *TEACHER, "checkpoint.every_steps=5"])
    monkeypatch.setattr(Trainer, "save_checkpoint", original)
    assert len(metric_records(run)) == 2  # epoch 2's line was written, its checkpoint was not
    assert CheckpointStore(run / "checkpoints").history()[-1][0] == (1, 19)
    assert main(["train-teacher", "--resume", str(run)]) == 0
    assert_same_run(reference, run)


def test_no_intact_checkpoint_is_refused_naming_each(tmp_path, reference, capsys):
    run = tmp_path / "run"
    run.mkdir()
    for path in reference.iterdir():
        if path.is_file() and path.name != "summary.json":  # an unfinished run
            (run / path.name).write_bytes(path.read_bytes())
    (run / "checkpoints").mkdir()
    for _, path in CheckpointStore(reference / "checkpoints").history():
        (run / "checkpoints" / path.name).write_bytes(path.read_bytes()[:100])
        (run / "checkpoints" / (path.name + ".sha256")).write_bytes(
            (reference / "checkpoints" / (path.name + ".sha256")).read_bytes())
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(["train-teacher", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    newest = run / "checkpoints" / "ckpt-e0003-s000000.pt"
    assert f"no intact checkpoint to resume {run} from: checkpoint {newest} is corrupt" in err
    assert err.count("is corrupt") == 2 and f"Start again with --overwrite --out {run}" in err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
