"""Progress a person can follow: every command says what it will do, then shows progress with rate
and time left (a bar on a terminal, steady lines in a log file); the demo names its runs."""

from __future__ import annotations

import io
import json
import re

import pytest

import intrakd.progress as progress_module
from intrakd.cli import main
from intrakd.progress import Progress, format_duration

TEACHER = ["data.dataset=digits", "model=digits_cnn_small", "optim.epochs=1", "device=cpu"]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run_pass(total: int, seconds_per_step: float, **kwargs) -> str:
    clock, stream = Clock(), io.StringIO()
    progress = Progress(total, "[t] epoch 1/2", after=total, stream=stream, terminal=False, clock=clock, **kwargs)
    for _ in range(total):
        clock.now += seconds_per_step
        progress.update(1, 64, lambda: {"loss": 2.5})
    progress.close()
    return stream.getvalue()


def test_log_lines_come_at_every_tenth_and_say_step_loss_rate_and_time_left():
    lines = run_pass(1000, 0.1).splitlines()
    assert len(lines) == 10  # 10%, 20%, ... 100% (every 10 s)
    assert lines[0] == "[t] epoch 1/2 step 100/1000 (10%) loss=2.5 640 images/s, 1:30 left (run: 3:10)"


def test_log_lines_of_a_slow_pass_come_every_30_seconds_and_a_short_pass_is_quiet():
    steps = [int(re.search(r"step (\d+)/", line)[1]) for line in run_pass(1000, 1.0).splitlines()]
    assert steps[:5] == [30, 60, 90, 100, 130]  # 30 s apart, and at each tenth
    assert run_pass(20, 0.01) == ""


def test_a_terminal_gets_a_bar_and_other_ranks_say_nothing(monkeypatch):
    clock, stream = Clock(), io.StringIO()
    progress = Progress(10, "[t] epoch 1/1", stream=stream, terminal=True, clock=clock)
    for _ in range(10):
        clock.now += 1
        progress.update(1, 8)
    progress.close()
    assert "[t] epoch 1/1" in stream.getvalue() and "\r" in stream.getvalue()
    monkeypatch.setenv("RANK", "1")
    stream = io.StringIO()
    silent = Progress(10, "x", stream=stream, terminal=False, clock=Clock())
    silent.update(10, 80)
    assert stream.getvalue() == ""


def test_durations():
    assert [format_duration(s) for s in (5, 65, 3605, float("nan"))] == ["0:05", "1:05", "1:00:05", "?"]


def test_a_run_says_what_it_will_do_then_shows_progress(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(progress_module, "LINE_MIN_SECONDS", 0.0)
    out = tmp_path / "t"
    assert main(["train-teacher", "--out", str(out), *TEACHER, "intra.weight=0"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"intrakd train-teacher: vanilla teacher -> {out} (new run)"
    assert err[1] == "  data    digits: 1347 training images, 10 classes; evaluated on test: 450 images"
    assert err[2] == "  model   digits_cnn_small: 21 steps/epoch x 1 epochs, batch 64"
    assert re.fullmatch(r"  device  cpu, precision (fp32|bf16)", err[3])
    assert err[4].startswith("  input   model mean (")
    assert err[5] == "  optim   SGD lr 0.05 momentum 0.9 wd 0.0005, x0.1 after epochs 1/1/1 (of 1)"
    assert any(re.fullmatch(r"\[vanilla teacher\] epoch 1/1 step \d+/21 \(\d+%\) loss=[\d.]+ \d+ images/s, "
                            r"[\d:]+ left", line) for line in err[6:])
    capsys.readouterr()
    checkpoint = str(out / "checkpoints" / "last.pt")
    assert main(["evaluate", "--checkpoint", checkpoint]) == 0
    assert f"intrakd evaluate: {checkpoint} (digits_cnn_small) on digits test: 450 images, device cpu" in \
        capsys.readouterr().err
    assert main(["analyze", "--checkpoint", checkpoint]) == 0
    assert f"intrakd analyze: {checkpoint} (digits_cnn_small) on digits test: 450 images, device cpu" in \
        capsys.readouterr().err


def test_demo_lines_name_the_run(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--epochs", "1", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    err = captured.out + captured.err
    for name in ("vanilla teacher", "enriched teacher", "student of the vanilla teacher",
                 "student of the enriched teacher"):
        assert f"[{name}] epoch 1/1 " in err


@pytest.mark.parametrize("cells", [2])
def test_sweep_says_what_it_will_run_and_the_time_left(tmp_path, capsys, cells):
    spec = tmp_path / "sweep.yaml"
    spec.write_text(json.dumps({
        "out": str(tmp_path / "runs"), "seeds": list(range(cells)),
        "common": {"device": "cpu", "data": {"dataset": "digits", "train_per_class": 20},
                   "optim": {"epochs": 1, "milestones": [1]}},
        "teacher": {"config": {"model": "digits_cnn_small"}, "grid": [{"intra.weight": [0]}]}}))
    assert main(["sweep", str(spec)]) == 0
    err = capsys.readouterr().err  # a sweep's progress is a human message: stderr
    assert f"sweep: {cells} runs in {tmp_path / 'runs'}, 0 already finished, {cells} to run" in err
    assert re.search(r"\[1/2\] teacher .* done in [\d:]+; 1 runs to go, about [\d:]+ left", err)
