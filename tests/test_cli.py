"""End to end through the command line: teacher, student, evaluate, demo; same seed, same numbers."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from intrakd.cli import EXIT_BROKEN_PIPE, main
from intrakd.train import accuracy

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_cifar = pytest.mark.skipif(not (SHARED_DATA / "cifar-100-python" / "train").exists(),
                                 reason=f"real CIFAR-100 not present at {SHARED_DATA}")

DIGITS = ["data.dataset=digits", "optim.epochs=2", "optim.milestones=[1]", "data.batch_size=32"]


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "teacher"
    assert main(["train-teacher", "--out", str(out), "model=digits_cnn_small", "intra.weight=0.1",
                 "intra.delta=0.1", *DIGITS]) == 0
    return out


def test_teacher_run_folder_tells_the_whole_story(teacher_run):
    assert (teacher_run / "config.yaml").exists()
    assert {"last.pt", "best.pt"} <= {p.name for p in (teacher_run / "checkpoints").iterdir()}
    metrics = read_metrics(teacher_run)
    assert [m["epoch"] for m in metrics] == [1, 2]
    for key in ("loss", "ce", "intra", "intra_raw", "pass_rate", "anchors_used", "cache_fill", "train_acc",
                "test_acc", "test_top5", "lr", "images_per_s"):
        assert key in metrics[0], key
    assert metrics[0]["lr"] == 0.05 and metrics[1]["lr"] == pytest.approx(0.005)
    summary = json.loads((teacher_run / "summary.json").read_text())
    assert summary["final_acc"] == metrics[-1]["test_acc"] and summary["epochs"] == 2
    assert summary["final_top5"] == metrics[-1]["test_top5"] >= summary["final_acc"]  # top-1 stays the headline
    assert summary["best_acc"] == max(m["test_acc"] for m in metrics) and summary["wall_seconds"] > 0
    state = torch.load(teacher_run / "checkpoints" / "last.pt", weights_only=True)
    assert state["model_name"] == "digits_cnn_small" and "cache.features" in state["objective"]


def test_same_seed_same_numbers(teacher_run, tmp_path):
    again = tmp_path / "again"
    assert main(["train-teacher", "--out", str(again), "model=digits_cnn_small", "intra.weight=0.1",
                 "intra.delta=0.1", *DIGITS]) == 0
    def without_timing(metrics):
        return [{k: v for k, v in m.items() if k not in ("images_per_s", "train_seconds")} for m in metrics]

    assert without_timing(read_metrics(again)) == without_timing(read_metrics(teacher_run))


def test_distill_and_evaluate(teacher_run, tmp_path, capsys):
    out = tmp_path / "student"
    ckpt = teacher_run / "checkpoints" / "last.pt"
    assert main(["distill", "--teacher", str(ckpt), "--out", str(out), "model=digits_cnn_small", *DIGITS]) == 0
    metrics = read_metrics(out)
    assert {"ce", "kd", "loss", "test_acc"} <= metrics[0].keys()
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(out / "checkpoints" / "last.pt")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["acc"] == pytest.approx(metrics[-1]["test_acc"])
    assert result["top5"] == pytest.approx(metrics[-1]["test_top5"])
    assert result["intra_inter_ratio"] == pytest.approx(result["intra_class_distance"] / result["inter_class_distance"])


def test_top_k_accuracy_known_answers():
    logits = torch.tensor([[5.0, 4, 3, 2, 1, 0], [0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5]])
    labels = torch.tensor([0, 0, 4])
    assert accuracy(logits, labels) == pytest.approx(100 / 3)
    assert accuracy(logits, labels, 5) == pytest.approx(200 / 3)  # label 0 is 6th of 6 in the second row
    assert accuracy(logits[:, :3], torch.tensor([0, 0, 2]), 5) == 100.0  # k capped at the 3 classes


def test_vanilla_flag_trains_plain_cross_entropy(tmp_path):
    out = tmp_path / "vanilla"
    assert main(["train-teacher", "--vanilla", "--out", str(out), "model=digits_cnn_small", *DIGITS]) == 0
    assert "intra" not in read_metrics(out)[0]


def test_existing_run_is_refused_and_kept(teacher_run, capsys):
    before = (teacher_run / "metrics.jsonl").read_bytes()
    assert main(["train-teacher", "--out", str(teacher_run), "model=digits_cnn_small", *DIGITS]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (teacher_run / "metrics.jsonl").read_bytes() == before


@pytest.mark.parametrize("args, message", [
    (["train-teacher", "intra.weigth=0.1"], "unknown config key intra.weigth"),
    (["train-teacher", "data.dataset=cifar100", "data.root=/nonexistent/cifar"],
     "CIFAR-100 not found at /nonexistent/cifar"),
    (["distill", "data.dataset=digits"], "no teacher given"),
    (["distill", "--teacher", "/nonexistent.pt", "data.dataset=digits"], "checkpoint /nonexistent.pt does not exist"),
    (["train-teacher", "data.dataset=digits", "model=resnet8"],
     "model 'resnet8' cannot read this dataset's 1-channel 8x8 images"),
    (["train-teacher", "data.dataset=digits", "model=digits_cnn_small", "data.batch_size=100000"],
     "1347 training images is fewer than one batch of 100000: lower data.batch_size"),
])
def test_bad_input_exits_2_with_message(args, message, tmp_path, capsys):
    assert main([*args[:1], "--out", str(tmp_path / "run"), *args[1:]]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_fault_of_intrakd_keeps_its_traceback(tmp_path, monkeypatch, capsys):
    """Only bad input exits 2 with one line: a ValueError raised deep inside a model (a bug, not the
    user's input) leaves main with its traceback (Python then prints it and exits 1)."""
    from intrakd.models.digits import DigitsCNN

    def broken(self, x):
        raise ValueError("a bug deep inside the model")

    monkeypatch.setattr(DigitsCNN, "stages", broken)
    with pytest.raises(ValueError, match="a bug deep inside the model") as err:
        main(["train-teacher", "--out", str(tmp_path / "run"), "model=digits_cnn_small", *DIGITS])
    assert err.type is ValueError and "error:" not in capsys.readouterr().err


def test_teacher_with_other_class_count_is_refused(teacher_run, tmp_path, capsys):
    ckpt = teacher_run / "checkpoints" / "last.pt"
    args = ["distill", "--teacher", str(ckpt), "--out", str(tmp_path / "s"), "data.dataset=cifar100",
            f"data.root={tmp_path / 'fake'}"]
    from test_data import write_fake_cifar
    write_fake_cifar(tmp_path / "fake")
    assert main(args) == 2
    assert "is a 10-class model but the data has 100 classes" in capsys.readouterr().err


def test_student_that_cannot_read_the_images_is_refused(teacher_run, tmp_path, capsys):
    ckpt = teacher_run / "checkpoints" / "last.pt"
    out = tmp_path / "s"
    assert main(["distill", "--teacher", str(ckpt), "--out", str(out), "model=resnet8", *DIGITS]) == 2
    assert "model 'resnet8' cannot read this dataset's 1-channel 8x8 images" in capsys.readouterr().err
    assert not out.exists()


def test_demo_writes_table(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--epochs", "2"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert [r["teacher"] for r in results["rows"]] == ["vanilla", "enriched"]
    for row in results["rows"]:
        assert 0 < row["inter_class_distance"] and 0 < row["intra_class_distance"]
        assert row["intra_inter_ratio"] == pytest.approx(row["intra_class_distance"] / row["inter_class_distance"])
    assert "| enriched |" in (out / "results.md").read_text()
    assert "| vanilla |" in capsys.readouterr().out


@needs_cifar
def test_real_cifar100_slice_teacher_and_student(tmp_path):
    common = ["data.dataset=cifar100", f"data.root={SHARED_DATA}", "data.train_per_class=2",
              "data.eval_per_class=2", "data.batch_size=50", "optim.epochs=1"]
    teacher = tmp_path / "t"
    assert main(["train-teacher", "--out", str(teacher), "model=resnet8", "intra.delta=-1", *common]) == 0
    m = read_metrics(teacher)[0]
    assert m["pass_rate"] == 1.0 and m["intra"] > 0 and 0 <= m["test_acc"] <= 100
    student = tmp_path / "s"
    assert main(["distill", "--teacher", str(teacher / "checkpoints" / "last.pt"), "--out", str(student),
                 "model=resnet8", *common]) == 0
    assert read_metrics(student)[0]["kd"] > 0


def test_models_command_lists_zoo(capsys):
    assert main(["models"]) == 0
    assert "resnet8x4" in capsys.readouterr().out.split()


def test_output_read_in_part_stops_quietly():
    """`intrakd presets | head -1`: no traceback and no error line, the status a shell gives SIGPIPE
    (here the reader has gone before the first write)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([sys.executable, "-m", "intrakd", "presets"], check=False, stdout=write_end,
                              stderr=subprocess.PIPE, timeout=120)
    finally:
        os.close(write_end)
    assert (proc.returncode, proc.stderr) == (EXIT_BROKEN_PIPE, b"")
