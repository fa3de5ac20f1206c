"""The methods with a pre-training stage (AB, FT, FSP) and the engine's stage: each loss against a
slow computation of its paper's formula, what each stage trains, the run's records, and an exact
resume from inside the stage."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from test_resume import assert_same_run, crash_then_resume

from intrakd.cli import main
from intrakd.config import ConfigError, StudentConfig, TeacherConfig, load_config
from intrakd.data import Batch
from intrakd.models import ModelOutput, create_model
from intrakd.objectives import TrainSetInfo, create_distiller, distill_recipe
from intrakd.objectives.ab import ABObjective
from intrakd.objectives.fsp import FSPObjective, fsp_loss
from intrakd.objectives.ft import FTObjective, ft_loss
from intrakd.progress import RunPlan, run_intro
from intrakd.runs import distill, seed_everything, train_teacher
from intrakd.train import read_checkpoint
from intrakd.train.sinks import console_line

DIGITS = TrainSetInfo(10, torch.arange(20) % 10, (1, 8, 8))
COMMON = {"device": "cpu", "data": {"dataset": "digits", "train_per_class": 50, "eval_per_class": 20},
          "optim": {"epochs": 1, "milestones": [1]}}
STUDENT = {"ab": ("digits_cnn_small", ["distill.ab.first_stage=0"]),
           "ft": ("digits_cnn_small", []),
           "fsp": ("digits_cnn", [])}  # FSP needs the teacher's stage channels
"""Per method: the student model and the settings that fit the digits CNNs (two stage features)."""


def method_config(method: str, overrides: list[str] | None = None) -> StudentConfig:
    return load_config(StudentConfig, overrides=[f"distill.method={method}", *STUDENT[method][1], *(overrides or [])])


def digits_objective(method: str, overrides: list[str] | None = None):
    torch.manual_seed(0)
    student = create_model(STUDENT[method][0], num_classes=10)
    teacher = create_model("digits_cnn", num_classes=10).eval()
    return create_distiller(method_config(method, overrides).distill, student, teacher, DIGITS), student, teacher


def block_mean(f: torch.Tensor, b: int, c: int, h: int, w: int, size: tuple[int, int]) -> float:
    """Entry (h, w) of channel c of sample b of ``f`` average-pooled to ``size`` (whole blocks)."""
    bh, bw = f.shape[2] // size[0], f.shape[3] // size[1]
    cells = [float(f[b, c, h * bh + i, w * bw + j]) for i in range(bh) for j in range(bw)]
    return sum(cells) / len(cells)


# ------------------------------------------------------------------------------------------------ AB

def slow_ab(mapped: list[torch.Tensor], teacher: list[torch.Tensor], margin: float, weight: float) -> float:
    """The paper's eq. 6: squared hinges on the teacher's activation boundary, per element; stage i of
    n weighted 2^(i - n + 1); divided by the batch size."""
    total, n = 0.0, len(mapped)
    for i, (s, t) in enumerate(zip(mapped, teacher)):
        stage = 0.0
        for index in itertools.product(*map(range, s.shape)):
            x = float(s[index])
            stage += max(0.0, margin - x) ** 2 if float(t[index]) > 0 else max(0.0, margin + x) ** 2
        total += 2.0 ** (i - n + 1) * stage
    return weight * total / mapped[0].shape[0]


@pytest.mark.parametrize("margin", [1.0, 0.3])
def test_ab_loss_matches_the_papers_squared_hinge(margin):
    objective, _, _ = digits_objective("ab", [f"distill.ab.margin={margin}"])
    g = torch.Generator().manual_seed(1)
    s_feats = (torch.randn(3, 8, 8, 8, generator=g), torch.randn(3, 16, 4, 4, generator=g))
    t_feats = (torch.randn(3, 32, 8, 8, generator=g), torch.randn(3, 64, 4, 4, generator=g))
    losses, stats = objective.init_losses(ModelOutput(torch.zeros(3, 10), torch.zeros(3, 16), s_feats),
                                          ModelOutput(torch.zeros(3, 10), torch.zeros(3, 64), t_feats),
                                          Batch((torch.zeros(3, 1, 8, 8),), torch.tensor([0, 1, 2])))
    mapped = [connect(f).detach().double() for connect, f in zip(objective.connectors, s_feats)]  # BN: batch stats
    assert losses["ab"].item() == pytest.approx(slow_ab(mapped, [t.double() for t in t_feats], margin, 0.003), rel=1e-5)
    same_side = [((m > 0) == (t > 0)).double().mean().item() for m, t in zip(mapped, t_feats)]
    assert stats["ab_agreement"].item() == pytest.approx(sum(same_side) / 2, rel=1e-6)


def test_ab_connector_is_convreg_without_relu():
    objective, _, _ = digits_objective("ab")
    for connect in objective.connectors:  # RepDistiller's Connector: ConvReg(use_relu=False), both signs
        assert isinstance(connect[0], torch.nn.Conv2d) and connect[0].bias is not None
        assert isinstance(connect[-1], torch.nn.BatchNorm2d)


def test_ab_checks_the_stages_exist():
    with pytest.raises(ValueError, match=r"distill.ab.first_stage=2, but the student has 2 and the teacher 2"):
        ABObjective(load_config(StudentConfig, overrides=["distill.method=ab", "distill.ab.first_stage=2"]).distill,
                    create_model("digits_cnn_small", num_classes=10), create_model("digits_cnn", num_classes=10),
                    DIGITS)


# ----------------------------------------------------------------------------------------------- FSP

def slow_fsp(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> float:
    """The paper's eq. 2 (G = sum over positions of F1_i F2_j / (h w)), its squared difference averaged
    over samples and matrix entries, summed over consecutive pairs."""

    def gram(lower, upper):
        size = (min(lower.shape[2], upper.shape[2]), min(lower.shape[3], upper.shape[3]))
        positions = list(itertools.product(range(size[0]), range(size[1])))
        return [[[sum(block_mean(lower, b, i, h, w, size) * block_mean(upper, b, j, h, w, size) for h, w in positions)
                  / len(positions) for j in range(upper.shape[1])] for i in range(lower.shape[1])]
                for b in range(lower.shape[0])]

    total = 0.0
    for k in range(len(student) - 1):
        gs, gt = gram(student[k], student[k + 1]), gram(teacher[k], teacher[k + 1])
        entries = [(x - y) ** 2 for bs, bt in zip(gs, gt) for rs, rt in zip(bs, bt) for x, y in zip(rs, rt)]
        total += sum(entries) / len(entries)
    return total


def test_fsp_loss_matches_the_papers_gram_matrices():
    g = torch.Generator().manual_seed(2)
    shapes = [(2, 3, 8, 8), (2, 4, 4, 4), (2, 5, 4, 4)]  # 8x8 pooled to 4x4 in the first pair
    student = [torch.randn(*s, generator=g) for s in shapes]
    teacher = [torch.randn(*s, generator=g) * 2 for s in shapes]
    expected = slow_fsp([f.double() for f in student], [f.double() for f in teacher])
    assert fsp_loss(tuple(student), tuple(teacher)).item() == pytest.approx(expected, rel=1e-5)


def test_fsp_objective_weight_and_channel_check():
    objective, _, _ = digits_objective("fsp", ["distill.fsp.weight=2.5"])
    g = torch.Generator().manual_seed(3)
    s = (torch.randn(2, 32, 8, 8, generator=g), torch.randn(2, 64, 4, 4, generator=g))
    t = (torch.randn(2, 32, 8, 8, generator=g), torch.randn(2, 64, 4, 4, generator=g))
    losses, _ = objective.init_losses(ModelOutput(torch.zeros(2, 10), torch.zeros(2, 64), s),
                                      ModelOutput(torch.zeros(2, 10), torch.zeros(2, 64), t), None)
    assert losses["fsp"].item() == pytest.approx(2.5 * fsp_loss(s, t).item(), rel=1e-6)
    with pytest.raises(ValueError, match=r"the student has \[8, 16\] and the teacher \[32, 64\]"):
        FSPObjective(method_config("fsp").distill, create_model("digits_cnn_small", num_classes=10),
                     create_model("digits_cnn", num_classes=10), DIGITS)


# ------------------------------------------------------------------------------------------------ FT

def slow_ft(student: torch.Tensor, teacher: torch.Tensor, factor_map: str) -> float:
    """The paper's eq. 3 with p = 1, mean over entries: | F_T / ||F_T|| - F_S / ||F_S|| |, the larger map
    pooled; the factor is the whole map (``flat``) or its channel mean of squares (``attention``)."""
    size = (min(student.shape[2], teacher.shape[2]), min(student.shape[3], teacher.shape[3]))

    def factor(f, b):
        cells = itertools.product(range(size[0]), range(size[1]))
        if factor_map == "flat":
            values = [block_mean(f, b, c, h, w, size) for c in range(f.shape[1]) for h, w in
                      itertools.product(range(size[0]), range(size[1]))]
        else:
            values = [sum(block_mean(f, b, c, h, w, size) ** 2 for c in range(f.shape[1])) / f.shape[1]
                      for h, w in cells]
        norm = math.sqrt(sum(v * v for v in values))
        return [v / norm for v in values]

    differences = [abs(x - y) for b in range(student.shape[0]) for x, y in zip(factor(student, b), factor(teacher, b))]
    return sum(differences) / len(differences)


@pytest.mark.parametrize("factor_map", ["attention", "flat"])
def test_ft_loss_matches_the_papers_factor_distance(factor_map):
    g = torch.Generator().manual_seed(4)
    student, teacher = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    expected = slow_ft(student.double(), teacher.double(), factor_map)
    assert ft_loss(student, teacher, factor_map).item() == pytest.approx(expected, rel=1e-5)


def test_ft_stages_train_the_paraphraser_then_the_translator_with_the_paraphraser_frozen():
    objective, student, teacher = digits_objective("ft")
    assert isinstance(objective, FTObjective)
    batch = Batch((torch.randn(4, 1, 8, 8),), torch.tensor([1, 2, 3, 4]))
    init = objective.init_step(student, batch, teacher)
    assert set(init.losses) == {"ft_reconstruction"}
    feature = teacher(batch.views[0]).features[-1]
    reconstruction = objective.paraphraser(feature)
    assert reconstruction.shape == feature.shape
    torch.testing.assert_close(init.losses["ft_reconstruction"], ((reconstruction - feature) ** 2).mean())
    init.losses["ft_reconstruction"].backward()
    assert objective.init_parameters(student) == list(objective.paraphraser.parameters())
    assert all(p.grad is None for p in [*student.parameters(), *objective.translator.parameters()])
    objective.zero_grad(set_to_none=True)
    main = objective(student, batch, teacher)
    assert set(main.losses) == {"ce", "ft"}
    main.losses["ft"].backward()
    assert all(p.grad is None for p in objective.paraphraser.parameters())
    assert all(p.grad is not None for p in objective.translator.parameters())


@pytest.mark.parametrize(("teacher_name", "student_name", "teacher_channels", "student_channels"), [
    ("resnet32x4", "ShuffleV2", 256, 464), ("vgg13", "MobileNetV2", 512, 160), ("wrn_40_2", "wrn_16_2", 128, 128),
])
def test_ft_reads_the_last_stage_repdistiller_reads(teacher_name, student_name, teacher_channels, student_channels):
    """RepDistiller's FT reads ``feat[-2]``, the last stage (not a 1x1 head map: 464 and 160 channels
    on ShuffleV2 and MobileNetV2, where the head maps have 1024 and 1280)."""
    teacher, student = create_model(teacher_name, num_classes=100), create_model(student_name, num_classes=100)
    objective = create_distiller(method_config("ft").distill, student, teacher,
                                 TrainSetInfo(100, torch.arange(100), (3, 32, 32)))
    first_conv = [next(m for m in part.modules() if isinstance(m, torch.nn.Conv2d))
                  for part in (objective.paraphraser, objective.translator)]
    assert [conv.in_channels for conv in first_conv] == [teacher_channels, student_channels]
    assert first_conv[1].out_channels == student_channels


def test_ft_pretrains_at_the_run_rate_for_the_students_repdistiller_does():
    assert distill_recipe("ft", "resnet32x4", "resnet8x4")["ft"]["init_lr"] == 0.01
    assert distill_recipe("ft", "vgg13", "vgg8")["ft"]["init_lr"] is None
    loaded = load_config(StudentConfig, base={"distill": distill_recipe("ft", "vgg13", "vgg8")})
    assert loaded.distill.ft.init_lr is None


# --------------------------------------------------------------------------------- the engine's stage

def test_init_stage_settings_are_checked_and_may_be_zero():
    with pytest.raises(ConfigError, match="distill.ab.init_epochs must be >= 0, got -1"):
        method_config("ab", ["distill.ab.init_epochs=-1"])
    with pytest.raises(ConfigError, match="distill.fsp.init_lr must be > 0, got 0"):
        method_config("fsp", ["distill.fsp.init_lr=0"])
    objective, _, _ = digits_objective("fsp", ["distill.fsp.init_epochs=0"])
    assert objective.init_epochs == 0


def test_the_run_says_and_shows_the_stage():
    intro = run_intro(RunPlan("distill", "s", "out", None, "digits", 10, 10, "test", 5, "m", steps_per_epoch=8,
                              epochs=240, batch_size=64, device="cpu", precision="fp32", init_epochs=30))
    assert "8 steps/epoch x 270 epochs (30 pre-training + 240), batch 64" in intro[2]
    assert console_line("s", {"epoch": 3, "stage": "init", "loss": 1.0}, 270, "test") == \
        "[s] epoch 3/270 (pre-training) loss=1"


@pytest.fixture(scope="module")
def teacher_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    train_teacher(load_config(TeacherConfig, base={**COMMON, "model": "digits_cnn", "views": 1,
                                                   "intra": {"weight": 0.0}}), out)
    return out / "checkpoints" / "last.pt"


def run_config(teacher_checkpoint, method: str, extra: list[str] | None = None) -> StudentConfig:
    return load_config(StudentConfig, base={**COMMON, "model": STUDENT[method][0], "teacher": str(teacher_checkpoint)},
                       overrides=[f"distill.method={method}", *STUDENT[method][1], f"distill.{method}.init_epochs=1",
                                  *(extra or [])])


@pytest.mark.parametrize(("method", "init_terms", "main_terms", "init_lr"), [
    ("ab", {"ab", "ab_agreement"}, {"ce"}, 0.05),
    ("ft", {"ft_reconstruction"}, {"ce", "ft"}, 0.01),
    ("fsp", {"fsp"}, {"ce"}, 0.05),
])
def test_one_epoch_of_pre_training_then_the_main_stage(teacher_checkpoint, tmp_path, method, init_terms, main_terms,
                                                       init_lr):
    cfg = run_config(teacher_checkpoint, method)
    summary = distill(cfg, tmp_path)
    first, second = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert (first["epoch"], first["stage"], first["lr"]) == (1, "init", init_lr)
    assert (second["epoch"], second["stage"], second["lr"]) == (2, "main", 0.05)  # the main schedule from its start
    assert init_terms <= first.keys() and not main_terms & first.keys()
    assert main_terms <= second.keys() and not init_terms & second.keys()
    assert all(math.isfinite(r[k]) for r, keys in ((first, init_terms), (second, main_terms)) for k in keys)
    assert (summary["epochs"], summary["init_epochs"]) == (2, 1)
    assert summary["best_acc"] == second["test_acc"]  # the best student is one of the main stage
    # what the stage trained: the state after epoch 1 against the run's seeded initial state
    after_init = read_checkpoint(tmp_path / "checkpoints" / "ckpt-e0001-s000000.pt")
    teacher = create_model("digits_cnn", num_classes=10)  # before the seed, as the run loads its teacher
    seed_everything(cfg.seed)
    model = create_model(cfg.model, num_classes=10)
    initial = {"model": model.state_dict(),
               "objective": create_distiller(cfg.distill, model, teacher, DIGITS).state_dict()}
    changed = {f"{part}.{name}" for part in initial for name, value in initial[part].items()
               if not torch.equal(value, after_init[part][name])}
    if method == "ft":  # the paraphraser alone; the student ran in eval mode, its batch-norm statistics kept
        assert changed and all(name.startswith("objective.paraphraser.") for name in changed)
    else:  # the student's body (batch-norm statistics included) and AB's connectors, not its classifier
        assert not any(name.startswith("model.fc.") for name in changed)
        assert any(name.startswith("model.") and "running_mean" in name for name in changed)
        assert {name.split(".")[1] for name in changed if name.startswith("objective.")} == (
            {"connectors"} if method == "ab" else set())
    assert after_init["scheduler"]["last_epoch"] == 0 and not after_init["optimizer"]["state"]
    assert after_init["init_optimizer"]["state"]  # its momentum is in the checkpoint


@pytest.mark.slow
def test_a_run_crashed_in_its_pre_training_stage_resumes_exactly(teacher_checkpoint, tmp_path, monkeypatch):
    args = ["--teacher", str(teacher_checkpoint), "device=cpu", "data.dataset=digits", "data.train_per_class=50",
            "data.eval_per_class=20", "model=digits_cnn_small", "optim.epochs=1", "optim.milestones=[1]",
            "distill.method=ab", *STUDENT["ab"][1], "distill.ab.init_epochs=2", "checkpoint.every_steps=3"]
    assert main(["distill", "--out", str(tmp_path / "straight"), *args]) == 0

    # 7 steps an epoch: step 13 is in epoch 2 (pre-training), after the checkpoint at step 12
    crash_then_resume(monkeypatch, "distill", tmp_path / "crashed", args, step=13)
    assert_same_run(tmp_path / "straight", tmp_path / "crashed")
    straight, crashed = (read_checkpoint(tmp_path / run / "checkpoints" / "last.pt") for run in ("straight", "crashed"))
    for index, state in straight["init_optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"], crashed["init_optimizer"]["state"][index]["momentum_buffer"])
