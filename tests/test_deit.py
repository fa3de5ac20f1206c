"""DeiT's distillation token (``distill.method=deit``): its terms against a slow computation of the
paper's definitions, the token added to a timm ViT and rebuilt from a checkpoint, the prediction as
the mean of the two heads, and a tiny ViT student distilled end to end that resumes exactly."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from fakes import TinyNet
from test_resume import assert_same_run, crash_then_resume, metric_records

from intrakd.cli import main
from intrakd.config import ConfigError, DistillConfig, StudentConfig, load_config
from intrakd.data import Batch
from intrakd.models import create_model
from intrakd.models.checkpoint import classifier_from_checkpoint
from intrakd.models.timm_models import add_distillation_token
from intrakd.objectives import TrainSetInfo, create_distiller
from intrakd.objectives.deit import deit_token_term

timm = pytest.importorskip("timm")

SHAPE = (1, 32, 32)
VIT = "timm/test_vit"  # timm's own test ViT: 6 blocks of width 64, patch 16, built without downloaded weights


def slow_hard(student: torch.Tensor, teacher: torch.Tensor) -> float:
    """Mean over the batch of -log softmax(z_dist)[argmax z_t] (the paper's hard-label distillation)."""
    total = 0.0
    for s, t in zip(student.tolist(), teacher.tolist()):
        target = max(range(len(t)), key=t.__getitem__)
        total += -(s[target] - math.log(sum(math.exp(v) for v in s)))
    return total / len(student)


def slow_soft(student: torch.Tensor, teacher: torch.Tensor, tau: float) -> float:
    """tau^2 KL(psi(z_t / tau) || psi(z_dist / tau)) summed over the batch, divided by batch x classes
    (the paper's soft distillation, normalised as the reference code does)."""
    total = 0.0
    for s, t in zip(student.tolist(), teacher.tolist()):
        ps = [math.exp(v / tau) for v in s]
        pt = [math.exp(v / tau) for v in t]
        ps, pt = [v / sum(ps) for v in ps], [v / sum(pt) for v in pt]
        total += sum(q * math.log(q / p) for q, p in zip(pt, ps))
    return tau**2 * total / student.numel()


@pytest.mark.parametrize("tau", [1.0, 3.0])
def test_token_terms_match_the_papers_definitions(tau):
    g = torch.Generator().manual_seed(4)
    student, teacher = torch.randn(6, 5, generator=g) * 3, torch.randn(6, 5, generator=g) * 3
    hard = deit_token_term(student, teacher, "hard", tau)
    soft = deit_token_term(student, teacher, "soft", tau)
    assert hard.item() == pytest.approx(slow_hard(student.double(), teacher.double()), rel=1e-5)
    assert soft.item() == pytest.approx(slow_soft(student.double(), teacher.double(), tau), rel=1e-5)
    same = deit_token_term(teacher, teacher, "soft", tau)
    assert same.abs().item() < 1e-6


def vit(seed: int = 0):
    torch.manual_seed(seed)
    return create_model(VIT, num_classes=4, image_shape=SHAPE)


def deit(student, variant: str = "hard"):
    cfg = load_config(StudentConfig, overrides=["distill.method=deit", f"distill.deit.variant={variant}"]).distill
    teacher = TinyNet(num_classes=4).eval()
    return create_distiller(cfg, student, teacher, TrainSetInfo(4, torch.arange(8) % 4, SHAPE)), teacher


@pytest.mark.parametrize("variant", ["hard", "soft"])
def test_the_class_head_learns_the_labels_and_the_token_the_teacher(variant):
    student = vit()
    objective, teacher = deit(student, variant)
    images = torch.nn.functional.interpolate(torch.randn(8, 1, 8, 8), size=32)
    batch = Batch((images,), torch.arange(8) % 4, torch.arange(8))
    result = objective(student, batch, teacher)
    out = student(images)
    t = teacher(images).logits
    assert sorted(result.losses) == ["ce", "deit"]
    torch.testing.assert_close(result.losses["ce"], 0.5 * F.cross_entropy(out.heads[0], batch.labels))
    torch.testing.assert_close(result.losses["deit"], 0.5 * deit_token_term(out.heads[1], t, variant, 1.0))
    torch.testing.assert_close(result.logits, (out.heads[0] + out.heads[1]) / 2)
    sum(result.losses.values()).backward()
    assert student.net.dist_token.grad.abs().sum() > 0 and student.net.head_dist.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_a_zoo_student_or_a_vit_without_a_class_token_is_refused():
    cfg = DistillConfig.recipe("deit")
    info = TrainSetInfo(4, torch.arange(8) % 4, SHAPE)
    with pytest.raises(ConfigError, match="distill.method=deit: a distillation token needs a timm Vision Transformer"):
        create_distiller(cfg, TinyNet(num_classes=4), TinyNet(num_classes=4), info)
    pooled = create_model("timm/test_vit2", num_classes=4, image_shape=SHAPE)  # average pooling, a register token
    with pytest.raises(ConfigError, match="no register tokens"):
        create_distiller(cfg, pooled, TinyNet(num_classes=4), info)


def test_the_added_token_keeps_the_vits_weights_and_a_checkpoint_rebuilds_it(tmp_path):
    plain = vit().eval()
    student = vit().eval()
    add_distillation_token(student)
    add_distillation_token(student)  # once only
    net = student.net
    assert net.pos_embed.shape[1] == plain.net.pos_embed.shape[1] + 1 and net.num_prefix_tokens == 2
    torch.testing.assert_close(net.pos_embed[:, [0, *range(2, net.pos_embed.shape[1])]], plain.net.pos_embed)
    torch.testing.assert_close(net.cls_token, plain.net.cls_token)
    x = torch.randn(3, *SHAPE)
    out = student(x)
    torch.testing.assert_close(out.logits, (out.heads[0] + out.heads[1]) / 2)
    torch.testing.assert_close(out.logits, net(x))  # timm's own forward: the mean of the heads
    assert out.features[0].shape == (3, 64, 2, 2)  # the patch tokens only
    torch.save({"model": student.state_dict(), "model_name": VIT}, tmp_path / "student.pt")
    rebuilt, _ = classifier_from_checkpoint(tmp_path / "student.pt", num_classes=4, image_shape=SHAPE)
    torch.testing.assert_close(rebuilt.eval()(x).logits, out.logits)


def test_timms_distilled_deit_is_a_model_with_two_heads():
    torch.manual_seed(0)
    model = create_model("timm/deit_tiny_distilled_patch16_224", num_classes=3, image_shape=(3, 32, 32)).eval()
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert model.distilled and len(out.heads) == 2
    torch.testing.assert_close(out.logits, model.net(x))
    torch.testing.assert_close(out.logits, (out.heads[0] + out.heads[1]) / 2)


DATA = ["device=cpu", "data.dataset=digits", "data.image_size=32", "data.train_per_class=24"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher") / "run"
    assert main(["train-teacher", "--vanilla", "--out", str(out), *DATA, "model=digits_cnn", "views=1",
                 "optim.epochs=2", "optim.milestones=[1]"]) == 0
    return out / "checkpoints" / "last.pt"


def test_a_tiny_vit_student_distils_end_to_end_resumes_exactly_and_evaluates_with_both_heads(
        teacher, tmp_path, monkeypatch, capsys):
    student = ["--teacher", str(teacher), *DATA, f"model={VIT}", "distill.method=deit", "optim.epochs=2",
               "optim.milestones=[1]", "optim.lr=0.01", "checkpoint.every_steps=2"]
    assert main(["distill", "--out", str(tmp_path / "straight"), *student]) == 0
    records = metric_records(tmp_path / "straight")
    assert len(records) == 2 and all(r["deit"] > 0 and r["ce"] > 0 for r in records)
    crash_then_resume(monkeypatch, "distill", tmp_path / "crashed", student, step=5)
    assert_same_run(tmp_path / "straight", tmp_path / "crashed")
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(tmp_path / "straight" / "checkpoints" / "last.pt")]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["acc"] == pytest.approx(records[-1]["test_acc"])
    # DeiT reads only the teacher's logits: a store of them gives the same student
    store = tmp_path / "store"
    assert main(["teacher-outputs", "--out", str(store), *student]) == 0
    stored = [a for a in student if not a.startswith("--teacher") and a != str(teacher)]
    assert main(["distill", "--out", str(tmp_path / "stored"), f"teacher_outputs={store}", *stored]) == 0
    assert metric_records(tmp_path / "stored") == records
