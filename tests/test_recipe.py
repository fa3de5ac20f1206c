"""The training recipe settings: optimiser, schedule and warm-up, label smoothing, MixUp and CutMix, the
weights' moving average; each resumable bit for bit."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from test_resume import STEPS_PER_EPOCH, cli, cli_env, metric_records, wait_for_step

from intrakd.cli import main
from intrakd.config import ConfigError, TeacherConfig, load_config
from intrakd.train import read_checkpoint
from intrakd.train.stages import build_optimizer, build_schedule


def rates(overrides: list[str]) -> list[float]:
    """The learning rate of each epoch of a run with ``overrides``."""
    cfg = load_config(TeacherConfig, None, overrides).optim
    optimizer = build_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg)
    schedule, out = build_schedule(optimizer, cfg), []
    for _ in range(cfg.epochs):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return out


def test_warmup_then_cosine_or_steps_counted_from_the_first_epoch():
    cosine = rates(["optim.epochs=6", "optim.lr=0.3", "optim.schedule=cosine", "optim.warmup_epochs=2"])
    assert cosine[:3] == pytest.approx([0.1, 0.2, 0.3])  # lr/(w+1) rising linearly to lr
    assert cosine[3:] == pytest.approx([0.3 * (1 + torch.cos(torch.tensor(k * torch.pi / 4)).item()) / 2
                                        for k in (1, 2, 3)])
    steps = rates(["optim.epochs=6", "optim.lr=0.3", "optim.warmup_epochs=2", "optim.milestones=[4]"])
    assert steps == pytest.approx([0.1, 0.2, 0.3, 0.3, 0.03, 0.03])  # x0.1 after epoch 4, as without warm-up
    assert rates(["optim.epochs=6", "optim.milestones=[4]"]) == pytest.approx([0.05] * 4 + [0.005] * 2)


def test_adamw_is_torchs():
    cfg = load_config(TeacherConfig, None, ["optim.name=adamw", "optim.weight_decay=0.05"]).optim
    optimizer = build_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg)
    assert type(optimizer) is torch.optim.AdamW and optimizer.defaults["weight_decay"] == 0.05


@pytest.mark.parametrize("override, message", [
    (["optim.epochs=3", "optim.warmup_epochs=3"], r"optim.warmup_epochs must be < optim.epochs \(3\)"),
    (["optim.epochs=9", "optim.warmup_epochs=3", "optim.milestones=[3,6]"], r"must lie after the warm-up"),
    (["optim.name=adam"], r"optim.name: 'adam' is not one of 'sgd', 'adamw'"),
    (["optim.schedule=linear"], r"optim.schedule: 'linear' is not one of 'step', 'cosine'"),
    (["train.label_smoothing=1"], r"train.label_smoothing must be in \[0, 1\)"),
])
def test_recipe_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(TeacherConfig, None, override)


RECIPE = ["data.dataset=digits", "model=digits_cnn", "optim.epochs=3", "optim.name=adamw", "optim.lr=0.002",
          "optim.weight_decay=0.05", "optim.schedule=cosine", "optim.warmup_epochs=1",
          "train.label_smoothing=0.1", "train.ema_decay=0.9", "device=cpu"]
ENRICHED = ["intra.weight=0.1"]
MIXED = ["intra.weight=0", "data.mixup=0.2", "data.cutmix=1.0"]
"""A vanilla teacher with MixUp and CutMix (the intra-class loss takes no mixed images)."""


def assert_same_state(a: Path, b: Path) -> None:
    """Same weights, objective state and optimiser state (every tensor), position and metrics."""
    sa, sb = read_checkpoint(a / "checkpoints" / "last.pt"), read_checkpoint(b / "checkpoints" / "last.pt")
    for key in ("model", "objective", "ema"):
        assert sa[key].keys() == sb[key].keys()
        for name, tensor in sa[key].items():
            assert torch.equal(tensor, sb[key][name]), f"{key}.{name} differs"
    for index, state in sa["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(sb["optimizer"]["state"][index][name]))
    assert sa["scheduler"] == sb["scheduler"]
    assert (sa["epoch"], sa["step"], sa["global_step"]) == (sb["epoch"], sb["step"], sb["global_step"])
    assert metric_records(a) == metric_records(b)


@pytest.mark.slow
@pytest.mark.parametrize("teacher", [ENRICHED, MIXED], ids=["enriched", "mixup-cutmix"])
def test_recipe_run_killed_then_resumed_is_bit_exact(tmp_path, teacher):
    """AdamW + warm-up + cosine + label smoothing + EMA on digits (an enriched teacher, or a vanilla one
    with MixUp and CutMix), SIGKILLed mid-epoch 2 and resumed, ends as an uninterrupted run (the moving
    average included)."""
    reference, run = tmp_path / "reference", tmp_path / "run"
    recipe = RECIPE + teacher
    assert main(["train-teacher", "--out", str(reference), *recipe]) == 0
    proc = subprocess.Popen(cli("train-teacher", "--out", str(run), *recipe, "checkpoint.every_steps=1"),
                            env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_step(run, STEPS_PER_EPOCH + 5, proc)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert main(["train-teacher", "--resume", str(run)]) == 0
    assert_same_state(reference, run)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["final_ema_acc"] == metric_records(run)[-1]["test_ema_acc"]  # beside the raw weights'
    assert summary["final_ema_acc"] != summary["final_acc"]
    lrs = [m["lr"] for m in metric_records(run)]
    assert lrs[0] == pytest.approx(0.001) and lrs[1] == pytest.approx(0.002) and lrs[2] < lrs[1]


def test_label_smoothing_reaches_the_cross_entropy(tmp_path):
    """One epoch of a vanilla teacher: its ce is torch's label-smoothed cross-entropy (higher than plain)."""
    common = ["data.dataset=digits", "model=digits_cnn_small", "optim.epochs=1", "intra.weight=0", "views=1",
              "optim.lr=0.2", "device=cpu"]
    assert main(["train-teacher", "--out", str(tmp_path / "plain"), *common]) == 0
    assert main(["train-teacher", "--out", str(tmp_path / "smooth"), *common, "train.label_smoothing=0.5"]) == 0
    plain, smooth = (metric_records(tmp_path / name)[0]["ce"] for name in ("plain", "smooth"))
    assert smooth > plain + 0.3
