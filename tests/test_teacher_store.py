"""A store of the teacher's outputs (``intrakd teacher-outputs``, ``distill teacher_outputs=STORE``): a
student distilled from it is the live-teacher student bit for bit; a store that does not hold what a
run needs is refused before anything is written; an interrupted writer continues."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_resume import assert_same_run, crash_then_resume, metric_records

from intrakd.cli import main
from intrakd.config import ConfigError, DataConfig
from intrakd.data import build_datasets
from intrakd.data.teacher_store import (
    SETTINGS,
    StoreWriter,
    TeacherStore,
    compact_logits,
    expand_logits,
    file_digest,
    shard_name,
    views_served,
)
from intrakd.data.tensor_data import Batch
from intrakd.losses import kd_loss
from intrakd.models import create_model
from intrakd.objectives.stored_teacher import StoredTeacher
from intrakd.runs import data_input

DATA = ["device=cpu", "data.dataset=digits", "data.train_per_class=50", "data.eval_per_class=20"]
STUDENT = [*DATA, "model=digits_cnn_small", "optim.epochs=3", "optim.milestones=[2]"]
EPOCHS = 3


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("teacher") / "run"
    assert main(["train-teacher", "--vanilla", "--out", str(out), "device=cpu", "data.dataset=digits",
                 "data.eval_per_class=20", "model=digits_cnn", "views=1", "optim.epochs=4",
                 "optim.milestones=[3]"]) == 0
    return out / "checkpoints" / "last.pt"


@pytest.fixture(scope="module")
def store(teacher, tmp_path_factory) -> Path:
    """Every class's logits of MLKD's two views (one weak, one strong) for 3 epochs."""
    out = tmp_path_factory.mktemp("store") / "store"
    assert main(["teacher-outputs", "--teacher", str(teacher), "--out", str(out), *STUDENT,
                 "distill.method=mlkd"]) == 0
    return out


@pytest.fixture(scope="module")
def live(teacher, tmp_path_factory) -> dict[str, Path]:
    """Students of the live teacher, by method."""
    runs = {}
    for method in ("kd", "mlkd"):
        runs[method] = tmp_path_factory.mktemp(f"live-{method}") / "run"
        assert main(["distill", "--teacher", str(teacher), "--out", str(runs[method]), *STUDENT,
                     f"distill.method={method}"]) == 0
    return runs


@pytest.mark.parametrize("method", ["kd", "mlkd"])
def test_student_from_the_store_equals_the_live_teacher_student(store, live, tmp_path, method):
    """KD reads the first (weak) view of MLKD's store: the views of a batch are drawn one after the other."""
    out = tmp_path / "run"
    assert main(["distill", f"teacher_outputs={store}", "--out", str(out), *STUDENT,
                 f"distill.method={method}"]) == 0
    assert_same_run(live[method], out)  # weights, optimiser, every logged digit of the 3 epochs
    summary = json.loads((out / "summary.json").read_text())
    assert summary["teacher"] == json.loads((store / SETTINGS).read_text())["teacher"]["path"]


def _rewrite(store: Path, epoch: int, change) -> None:
    """Change the records of epoch ``epoch`` with ``change(records)``, checksums made to match."""
    name = shard_name(epoch, 0)
    opened = TeacherStore(store)
    records = np.memmap(store / f"{name}.bin", opened.dtype, mode="r+")
    change(records)
    records.flush()
    del records
    digest = file_digest(store / f"{name}.bin")
    (store / f"{name}.sha256").write_text(digest + "\n")
    manifest = json.loads((store / "manifest.json").read_text())
    manifest["shards"][name]["sha256"] = digest
    (store / "manifest.json").write_text(json.dumps(manifest))


def test_changing_one_stored_crop_offset_changes_the_student(store, live, tmp_path):
    changed = tmp_path / "store"
    shutil.copytree(store, changed)

    def move_one_crop(records):
        records["crop"][5, 0, 1] = (records["crop"][5, 0, 1] + 1) % 3  # digits: padding 1, offsets 0..2

    _rewrite(changed, 1, move_one_crop)
    out = tmp_path / "run"
    assert main(["distill", f"teacher_outputs={changed}", "--out", str(out), *STUDENT, "distill.method=kd"]) == 0
    with pytest.raises(AssertionError):
        assert_same_run(live["kd"], out)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    reference = [json.loads(line) for line in (live["kd"] / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["loss"] == reference[0]["loss"]  # epoch 1 untouched
    assert lines[1]["loss"] != reference[1]["loss"]


def test_a_damaged_shard_is_refused(store, tmp_path, capsys):
    damaged = tmp_path / "store"
    shutil.copytree(store, damaged)
    with open(damaged / f"{shard_name(0, 0)}.bin", "r+b") as f:
        f.seek(100)
        f.write(b"\x01\x02")
    assert main(["distill", f"teacher_outputs={damaged}", "--out", str(tmp_path / "run"), *STUDENT]) == 2
    assert "is damaged" in capsys.readouterr().err


MISMATCHES = [
    (["seed=1"], "seed: the store has 0, this run 1"),
    (["data.batch_size=32"], "data.batch_size: the store has 64, this run 32"),
    (["data.train_per_class=40"], "data.train_per_class: the store has 50, this run 40"),
    (["optim.epochs=4", "optim.milestones=[2]"], "the run trains 4 epochs, the store holds 3"),
    (["perf.precision=bf16"], "perf.precision: the teacher's logits were computed in fp32"),
    (["distill.method=fitnet"], "distill.method=fitnet reads the teacher's features"),
    (["teacher_model=digits_cnn_small"], "teacher_model=digits_cnn_small but the store"),
]


@pytest.mark.parametrize(("extra", "message"), MISMATCHES)
def test_a_store_that_does_not_match_the_run_is_refused_and_nothing_written(store, tmp_path, capsys, extra,
                                                                            message):
    out = tmp_path / "run"
    assert main(["distill", f"teacher_outputs={store}", "--out", str(out), *STUDENT, *extra]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_a_store_of_another_teacher_is_refused(store, teacher, tmp_path, capsys):
    other = tmp_path / "other.pt"
    state = torch.load(teacher, weights_only=False)
    state["model"] = {k: v + 1 if v.is_floating_point() else v for k, v in state["model"].items()}
    torch.save(state, other)
    out = tmp_path / "run"
    assert main(["distill", "--teacher", str(other), f"teacher_outputs={store}", "--out", str(out), *STUDENT]) == 2
    assert "holds the outputs of another teacher" in capsys.readouterr().err
    assert not out.exists()
    # the same checkpoint under another name is the store's teacher
    shutil.copy(teacher, tmp_path / "copy.pt")
    assert main(["distill", "--teacher", str(tmp_path / "copy.pt"), f"teacher_outputs={store}", "--out", str(out),
                 *STUDENT, "optim.epochs=1", "optim.milestones=[1]"]) == 0


def test_a_student_with_a_store_resumes_exactly(store, tmp_path, monkeypatch):
    student = [f"teacher_outputs={store}", *STUDENT, "distill.method=mlkd", "checkpoint.every_steps=4"]
    assert main(["distill", "--out", str(tmp_path / "straight"), *student]) == 0
    crash_then_resume(monkeypatch, "distill", tmp_path / "crashed", student, step=10)
    assert_same_run(tmp_path / "straight", tmp_path / "crashed")


def test_an_interrupted_writer_keeps_its_finished_epochs_and_continues(teacher, store, tmp_path, monkeypatch,
                                                                       capsys):
    out = tmp_path / "store"
    command = ["teacher-outputs", "--teacher", str(teacher), "--out", str(out), *STUDENT, "distill.method=mlkd"]
    original, calls = StoreWriter.put, []

    def stopped_in_epoch_3(self, records, i, *args):
        calls.append(i)
        if len(calls) == 2 * 7 + 3:  # 7 batches an epoch
            raise KeyboardInterrupt
        original(self, records, i, *args)

    monkeypatch.setattr(StoreWriter, "put", stopped_in_epoch_3)
    assert main(command) == 130
    monkeypatch.setattr(StoreWriter, "put", original)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [SETTINGS] + [f"{shard_name(e, 0)}.{ext}" for e in (0, 1) for ext in ("bin", "sha256")])
    capsys.readouterr()
    assert main(command) == 0
    assert json.loads(capsys.readouterr().out)["epochs_written"] == 1
    for e in range(EPOCHS):  # the same bytes as the uninterrupted store
        assert file_digest(out / f"{shard_name(e, 0)}.bin") == file_digest(store / f"{shard_name(e, 0)}.bin")
    # extended by one epoch; another seed is another store
    assert main([*command, "--epochs", "4"]) == 0
    assert json.loads(capsys.readouterr().out)["epochs_written"] == 1
    assert TeacherStore(out).epochs == 4
    before = sorted(p.name for p in out.iterdir())
    assert main([*command, "seed=1"]) == 2
    assert "holds a store made with other settings (seed: the store has 0, this run 1)" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == before


KILLED_IN_EPOCH_3 = """
import os, signal, sys
from intrakd.cli import main
from intrakd.data.teacher_store import StoreWriter
put, calls = StoreWriter.put, []
def killed(self, records, i, *args):
    calls.append(i)
    if len(calls) == 2 * 7 + 3:  # 7 batches an epoch: mid-shard, its records half written
        os.kill(os.getpid(), signal.SIGKILL)
    put(self, records, i, *args)
StoreWriter.put = killed
main(sys.argv[1:])
"""


def test_a_writer_killed_mid_shard_leaves_no_trace_of_it_and_the_same_command_finishes_the_store(
        teacher, store, tmp_path, capsys):
    """SIGKILL (no cleanup at all): the half-written shard is a temporary file, removed when the same
    command runs again, which keeps the finished epochs and writes the store's bytes."""
    import os
    import subprocess
    import sys

    out = tmp_path / "store"
    command = ["teacher-outputs", "--teacher", str(teacher), "--out", str(out), *STUDENT, "distill.method=mlkd"]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    killed = subprocess.run([sys.executable, "-c", KILLED_IN_EPOCH_3, *command], env=env, capture_output=True,
                            timeout=300, check=False)
    assert killed.returncode == -9, killed.stderr[-2000:]
    names = sorted(p.name for p in out.iterdir())
    assert [n for n in names if n.endswith(".tmp")] and shard_name(2, 0) + ".bin" not in names
    assert main(command) == 0
    assert json.loads(capsys.readouterr().out)["epochs_written"] == 1
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    for e in range(EPOCHS):
        assert file_digest(out / f"{shard_name(e, 0)}.bin") == file_digest(store / f"{shard_name(e, 0)}.bin")


def test_teacher_outputs_refuses_an_out_it_reads_or_cannot_own_and_changes_nothing(teacher, store, tmp_path,
                                                                                  capsys):
    command = ["teacher-outputs", "--teacher", str(teacher), *STUDENT, "distill.method=mlkd"]
    inside = teacher.parent / "store"  # in the teacher run's checkpoints folder, which the command reads
    assert main([*command, "--out", str(inside)]) == 2
    assert "lies in" in capsys.readouterr().err and not inside.exists()
    (tmp_path / "file").write_text("x")
    assert main([*command, "--out", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err and (tmp_path / "file").read_text() == "x"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    assert main([*command, "--out", str(tmp_path / "other")]) == 2
    assert "holds no teacher-outputs store" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "other").iterdir()] == ["notes.txt"]
    # a store of this teacher is not extended with another teacher's outputs
    copy = tmp_path / "copy"
    shutil.copytree(store, copy)
    before = {p.name: file_digest(p) for p in copy.iterdir()}
    other = tmp_path / "other.pt"
    state = torch.load(teacher, weights_only=False)
    state["model"] = {k: v + 1 if v.is_floating_point() else v for k, v in state["model"].items()}
    torch.save(state, other)
    assert main(["teacher-outputs", "--teacher", str(other), "--out", str(copy), "--epochs", "4", *STUDENT,
                 "distill.method=mlkd"]) == 2
    assert "teacher.sha256: the store has" in capsys.readouterr().err
    assert {p.name: file_digest(p) for p in copy.iterdir()} == before


def test_an_incomplete_store_is_refused_naming_the_fix(teacher, tmp_path, capsys):
    out = tmp_path / "store"
    out.mkdir()
    (out / SETTINGS).write_text("{}")
    assert main(["distill", f"teacher_outputs={out}", "--out", str(tmp_path / "run"), *STUDENT]) == 2
    assert "is incomplete" in capsys.readouterr().err


def test_views_served_are_a_prefix_alike_weak_or_strong():
    assert views_served(2, 1, 1, 0)  # KD from MLKD's store: the weak view
    assert views_served(2, 1, 2, 1) and views_served(1, 0, 1, 0)
    assert not views_served(1, 0, 2, 1)  # more views than stored
    assert not views_served(2, 1, 2, 0)  # the second view stored strong, wanted weak
    assert not views_served(2, 0, 2, 1)


def test_the_stored_teacher_answers_only_for_views_of_the_batch():
    views, logits = (torch.zeros(2, 1, 8, 8), torch.ones(2, 1, 8, 8)), (torch.randn(2, 10), torch.randn(2, 10))
    teacher = StoredTeacher()
    (batch,) = list(teacher.feed([Batch(views, torch.zeros(2), teacher_logits=logits)]))
    assert teacher(batch.views[1]).logits is logits[1]
    with pytest.raises(RuntimeError, match="not a view of the batch"):
        teacher(views[1].clone())


TOP_K_KD_BOUND = {1: 0.40, 3: 0.18, 5: 0.07, 8: 0.01}
"""Largest change of the KD term (T = 4), relative to its mean, when the teacher's logits are kept as their
top K (of the 10 digits classes) and the rest's mass: over one epoch of stored views of a trained teacher,
for an untrained student and one trained 3 epochs. ``pytest -s -k top_k`` prints the measured changes
(README, "One teacher, many students")."""


def test_top_k_keeps_the_top_probabilities_and_the_rest_mass_exactly():
    logits = torch.randn(16, 100) * 3
    values, classes, rest = compact_logits(logits, 5)
    expanded = expand_logits(values.float(), classes, rest, 100)
    p, q = logits.softmax(1), expanded.softmax(1)
    top = p.gather(1, classes)
    assert torch.allclose(q.gather(1, classes), top, atol=2e-3)  # the top K stored in float16
    assert torch.allclose(q.sum(1) - q.gather(1, classes).sum(1), 1 - top.sum(1), atol=2e-3)


def test_top_k_changes_the_kd_term_within_its_bound(store, live):
    full = TeacherStore(store)
    train, _, _ = build_datasets(DataConfig(dataset="digits", train_per_class=50))
    student = torch.load(live["kd"] / "checkpoints" / "last.pt", weights_only=False)
    trained = create_model("digits_cnn_small", num_classes=10)
    trained.load_state_dict(student["model"])
    untrained = create_model("digits_cnn_small", num_classes=10)
    for k, bound in TOP_K_KD_BOUND.items():
        worst = 0.0
        for model in (trained.eval(), untrained.eval()):
            exact, approx = [], []
            for i in range(7):
                index, draws, (teacher_logits, _) = full.read(0, 0, i, 2, torch.device("cpu"))
                with torch.no_grad():
                    s = model(data_input(train)(train.augmentation.apply(train.images[index], draws[0]))).logits
                values, classes, rest = compact_logits(teacher_logits, k)
                exact.append(kd_loss(s, teacher_logits, 4.0))
                approx.append(kd_loss(s, expand_logits(values, classes, rest, 10), 4.0))
            change = (torch.stack(approx) - torch.stack(exact)).abs().mean() / torch.stack(exact).mean()
            worst = max(worst, float(change))
        print(f"top-{k} of 10 classes: the KD term (T=4) changes by {worst:.4f} of its mean")
        assert worst <= bound, f"top-{k}: the KD term moved by {worst:.3f} of itself (bound {bound})"


def test_a_bfloat16_teacher_stored_as_computed_gives_the_live_student(teacher, tmp_path):
    """Under bf16 autocast the teacher's logits are bfloat16: stored as such, the student is the live one."""
    run = [*DATA, "model=digits_cnn_small", "optim.epochs=2", "optim.milestones=[1]", "perf.precision=bf16"]
    assert main(["teacher-outputs", "--teacher", str(teacher), "--out", str(tmp_path / "store"), *run]) == 0
    assert TeacherStore(tmp_path / "store").manifest["logits"] == {"dtype": "bfloat16", "top_k": None}
    assert main(["distill", "--teacher", str(teacher), "--out", str(tmp_path / "live"), *run]) == 0
    assert main(["distill", f"teacher_outputs={tmp_path / 'store'}", "--out", str(tmp_path / "stored"), *run]) == 0
    assert_same_run(tmp_path / "live", tmp_path / "stored")


def test_a_top_k_store_is_smaller_and_trains(teacher, store, tmp_path, capsys):
    out = tmp_path / "store"
    assert main(["teacher-outputs", "--teacher", str(teacher), "--out", str(out), "--top-k", "3", "--epochs", "1",
                 *STUDENT, "distill.method=mlkd"]) == 0
    compact = json.loads(capsys.readouterr().out)["bytes_per_epoch"]
    assert compact < (store / f"{shard_name(0, 0)}.bin").stat().st_size
    assert main(["distill", f"teacher_outputs={out}", "--out", str(tmp_path / "run"), *DATA,
                 "model=digits_cnn_small", "optim.epochs=1", "optim.milestones=[1]"]) == 0
    assert main(["teacher-outputs", "--teacher", str(teacher), "--out", str(tmp_path / "bad"), "--top-k", "10",
                 *STUDENT]) == 2
    assert "--top-k must lie in 1..9" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


SWEEP = {
    "seeds": [0],
    "common": {"device": "cpu", "data": {"dataset": "digits", "train_per_class": 12, "eval_per_class": 5},
               "optim": {"epochs": 2, "milestones": [1]}},
    "teacher": {"config": {"model": "digits_cnn", "views": 1, "intra": {"weight": 0}}},
    "student": {"config": {"model": "digits_cnn_small"}, "grid": {"distill.method": ["kd", "mlkd"]}},
}


def test_a_sweep_makes_one_store_per_teacher_run_and_its_students_equal_the_live_ones(tmp_path, capsys):
    from intrakd.analysis.runfolders import run_config
    from intrakd.analysis.sweep import load_sweep, plan, run_sweep

    def sweep(name, shared):
        spec = {**SWEEP, "out": str(tmp_path / name),
                "student": {**SWEEP["student"], **({"teacher_outputs": True} if shared else {})}}
        (tmp_path / f"{name}.yaml").write_text(json.dumps(spec))
        return load_sweep(tmp_path / f"{name}.yaml")

    stored, live = sweep("stored", True), sweep("live", False)
    jobs = plan(stored)
    store = tmp_path / "stored" / "stores" / "base" / "seed0"
    assert [j.config.teacher_outputs for j in jobs if j.kind == "student"] == [str(store)] * 2
    assert run_sweep(stored, jobs, log=lambda line: None)["ran"] == 3
    assert run_sweep(live, plan(live), log=lambda line: None)["ran"] == 3
    manifest = TeacherStore(store).manifest
    assert (manifest["views"], manifest["strong_views"], manifest["epochs"]) == (2, 1, 2)  # MLKD's, for both
    for method in ("kd", "mlkd"):
        a, b = (tmp_path / name / "students" / "base" / f"distill.method={method}" / "seed0"
                for name in ("stored", "live"))
        assert_same_run(a, b)
        assert run_config(a) == run_config(b)  # reported as one group: the store kept every class
    written = (store / "manifest.json").stat().st_mtime_ns
    assert run_sweep(stored, plan(stored), log=lambda line: None)["skipped"] == 3
    assert (store / "manifest.json").stat().st_mtime_ns == written
    features = sweep("features", True)
    features.student_cells[0].overrides[0] = ("distill.method", "fitnet")
    with pytest.raises(ConfigError, match="distill.method=fitnet reads the teacher's features"):
        plan(features)


@pytest.mark.slow
def test_two_processes_write_one_shard_each_and_their_students_equal_the_live_ones(teacher, tmp_path):
    """Under ``torchrun --nproc_per_node 2`` (gloo): each rank stores its rows of every batch (its own
    augmentation stream), rank 0 writes the manifest, and a 2-process student from the store is the
    2-process student of the live teacher."""
    import os
    import socket
    import subprocess
    import sys

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    student = [*DATA, "model=digits_cnn_small", "optim.epochs=2", "optim.milestones=[1]"]
    store = tmp_path / "store"
    for command in (["teacher-outputs", "--teacher", str(teacher), "--out", str(store), *student],
                    ["distill", "--teacher", str(teacher), "--out", str(tmp_path / "live"), *student],
                    ["distill", f"teacher_outputs={store}", "--out", str(tmp_path / "stored"), *student]):
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                               "--master_port", str(free_port()), "-m", "intrakd", *command], env=env, check=False,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(TeacherStore(store).manifest["shards"]) == [shard_name(e, r) for e in (0, 1) for r in (0, 1)]
    assert metric_records(tmp_path / "live") == metric_records(tmp_path / "stored")
