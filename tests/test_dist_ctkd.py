"""DIST (Huang et al., NeurIPS 2022) and the CTKD learned temperature (Li et al., AAAI 2023): each
against a slow float64 computation written from the paper (value and input gradient), their
configuration, listing and presets, end to end on the embedded digits, and CTKD's exact resume."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from test_resume import assert_same_run, crash_then_resume

from intrakd.cli import main
from intrakd.config import ConfigError, StudentConfig, TeacherConfig, load_config
from intrakd.data import Batch
from intrakd.losses import kd_loss
from intrakd.models import create_model
from intrakd.objectives import (
    TrainSetInfo,
    create_distiller,
    describe_methods,
    distill_recipe,
    learned_temperature_methods,
    learned_temperature_recipe,
    logit_standardized_methods,
    methods_table,
)
from intrakd.objectives.ctkd import CurriculumTemperature, curriculum_strength, reverse_gradient
from intrakd.objectives.dist import PEARSON_EPS, dist_terms
from intrakd.objectives.dkd import dkd_terms
from intrakd.presets import CIFAR100_PAIRS, all_presets
from intrakd.runs import distill, train_teacher
from intrakd.train import read_checkpoint

DIGITS = TrainSetInfo(10, torch.arange(20) % 10, (1, 8, 8))
COMMON = {"device": "cpu", "data": {"dataset": "digits", "train_per_class": 50, "eval_per_class": 20},
          "optim": {"epochs": 1, "milestones": [1]}}


def logits(seed: int, shape: tuple[int, int] = (6, 5), scale: float = 3.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


# ------------------------------------------------------------------------------ slow references

def slow_softmax(row: list[torch.Tensor], temp: torch.Tensor | float) -> list[torch.Tensor]:
    e = [torch.exp(v / temp) for v in row]
    total = sum(e)
    return [v / total for v in e]


def slow_pearson(u: list[torch.Tensor], v: list[torch.Tensor]) -> torch.Tensor:
    """The paper's Pearson correlation, with the reference code's eps beside the norms' product."""
    mu, mv = sum(u) / len(u), sum(v) / len(v)
    cov = sum((a - mu) * (b - mv) for a, b in zip(u, v))
    norm_u = torch.sqrt(sum((a - mu) ** 2 for a in u))
    norm_v = torch.sqrt(sum((b - mv) ** 2 for b in v))
    return cov / (norm_u * norm_v + PEARSON_EPS)


def slow_dist(s: torch.Tensor, t: torch.Tensor, temp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inter, intra)`` times T^2 by loops over samples and classes (differentiable in ``s``)."""
    b, c = s.shape
    ys = [slow_softmax([s[i, k] for k in range(c)], temp) for i in range(b)]
    yt = [slow_softmax([t[i, k] for k in range(c)], temp) for i in range(b)]
    inter = 1 - sum(slow_pearson(ys[i], yt[i]) for i in range(b)) / b
    intra = 1 - sum(slow_pearson([ys[i][k] for i in range(b)], [yt[i][k] for i in range(b)]) for k in range(c)) / c
    return temp**2 * inter, temp**2 * intra


def slow_kd(s: torch.Tensor, t: torch.Tensor, temp: torch.Tensor) -> torch.Tensor:
    """``T^2 KL(p_t || p_s)`` averaged over the batch, by loops (differentiable in ``s`` and ``temp``)."""
    b, c = s.shape
    total = 0.0
    for i in range(b):
        ps = slow_softmax([s[i, k] for k in range(c)], temp)
        pt = slow_softmax([t[i, k] for k in range(c)], temp)
        total = total + sum(q * torch.log(q / r) for q, r in zip(pt, ps))
    return temp**2 * total / b


def slow_dkd(s: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, temp: torch.Tensor,
             alpha: float, beta: float) -> torch.Tensor:
    """``alpha TCKD + beta NCKD`` (both times T^2) averaged over the batch, by loops."""
    b, c = s.shape
    total = 0.0
    for i in range(b):
        ps = slow_softmax([s[i, k] for k in range(c)], temp)
        pt = slow_softmax([t[i, k] for k in range(c)], temp)
        y = int(labels[i])
        tckd = sum(q * torch.log(q / r) for q, r in zip((pt[y], 1 - pt[y]), (ps[y], 1 - ps[y])))
        others = [k for k in range(c) if k != y]
        qs = [ps[k] / (1 - ps[y]) for k in others]
        qt = [pt[k] / (1 - pt[y]) for k in others]
        nckd = sum(q * torch.log(q / r) for q, r in zip(qt, qs))
        total = total + alpha * tckd + beta * nckd
    return temp**2 * total / b


def reference_cosine_decay(epoch: int, max_value: float = 0.0, min_value: float = -1.0, loops: int = 10) -> float:
    """The CTKD repository's ``CosineDecay.get_value`` at its (1-based) epoch: the reversal layer's factor."""
    i = min(max(epoch, 0), loops)
    return (math.cos(i * math.pi / loops) + 1.0) * 0.5 * (max_value - min_value) + min_value


# ---------------------------------------------------------------------------------------------- DIST

@pytest.mark.parametrize("temp", [1.0, 4.0])
def test_dist_terms_match_slow_reference_value_and_gradient(temp):
    s, t = logits(0), logits(1, scale=5.0)
    s32 = s.clone().requires_grad_(True)
    inter, intra = dist_terms(s32, t, temp)
    (inter + 3.0 * intra).backward()
    s64 = s.double().requires_grad_(True)
    ref_inter, ref_intra = slow_dist(s64, t.double(), temp)
    (ref_inter + 3.0 * ref_intra).backward()
    assert inter.item() == pytest.approx(ref_inter.item(), rel=1e-5, abs=1e-6)
    assert intra.item() == pytest.approx(ref_intra.item(), rel=1e-5, abs=1e-6)
    torch.testing.assert_close(s32.grad.double(), s64.grad, rtol=1e-4, atol=1e-6)
    # the student equal to the teacher: perfect correlation both ways
    same = dist_terms(t, t, temp)
    assert same[0].item() == pytest.approx(0, abs=1e-4) and same[1].item() == pytest.approx(0, abs=1e-4)


def test_dist_ignores_what_a_correlation_ignores_and_is_finite_on_a_batch_of_one():
    s, t = logits(2), logits(3)
    # the inter-class term sees each sample's predictions only through their correlation: a sample
    # order change moves both models alike and leaves both terms
    order = torch.randperm(6, generator=torch.Generator().manual_seed(4))
    for a, b in zip(dist_terms(s[order], t[order], 4.0), dist_terms(s, t, 4.0)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    one = logits(5, (1, 5)).requires_grad_(True)
    inter, intra = dist_terms(one, logits(6, (1, 5)), 4.0)
    (inter + intra).backward()
    assert intra.item() == pytest.approx(16.0)  # one sample: no spread over the batch, correlation 0
    assert torch.isfinite(one.grad).all()


def digits_pair(seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(seed)
    return create_model("digits_cnn_small", num_classes=10), create_model("digits_cnn", num_classes=10).eval()


def digits_batch() -> Batch:
    images = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    return Batch((images,), torch.arange(8) % 10, torch.arange(8))


@pytest.mark.parametrize("standardize", [False, True])
def test_dist_objective_weighs_the_terms_as_the_reference_recipe(standardize):
    student, teacher = digits_pair()
    cfg = load_config(StudentConfig, overrides=["distill.method=dist",
                                                 f"distill.logit_standardize={str(standardize).lower()}"]).distill
    assert (cfg.ce_weight, cfg.kd_weight, cfg.temperature) == (1.0, 0.0, 4.0)
    objective = create_distiller(cfg, student, teacher, DIGITS)
    batch = digits_batch()
    losses = objective(student, batch, teacher).losses
    assert set(losses) == {"ce", "dist_inter", "dist_intra"}
    with torch.no_grad():
        s, t = student(batch.views[0]).logits.double(), teacher(batch.views[0]).logits.double()
    inter, intra = slow_dist(s, t, 4.0)
    # logit standardisation leaves DIST's correlation terms alone (no paper publishes a standardised
    # DIST); float32 (as the reference computes) centres near-uniform predictions to ~1e-5 relative
    assert losses["dist_inter"].item() == pytest.approx(2.0 * inter.item(), rel=1e-4)
    assert losses["dist_intra"].item() == pytest.approx(2.0 * intra.item(), rel=1e-4)
    assert losses["ce"].item() == pytest.approx(torch.nn.functional.cross_entropy(s, batch.labels).item(), rel=1e-5)


def test_dist_recipe_listing_and_presets():
    assert distill_recipe("dist") == {"method": "dist", "ce_weight": 1.0, "kd_weight": 0.0, "temperature": 4.0,
                                      "dist": {"inter_weight": 2.0, "intra_weight": 2.0}}
    assert "dist" not in logit_standardized_methods()
    assert "distill.dist.inter_weight=2.0" in describe_methods() and "| `dist` | DIST (Huang et al." in methods_table()
    published = {("wrn_40_2", "wrn_40_1"): 74.43, ("resnet56", "resnet20"): 71.75, ("resnet32x4", "resnet8x4"): 76.31,
                 ("ResNet50", "MobileNetV2"): 68.66, ("resnet32x4", "ShuffleV1"): 76.34,
                 ("resnet32x4", "ShuffleV2"): 77.35}
    for teacher, student, _ in CIFAR100_PAIRS:
        for variant in ("vanilla", "enriched"):
            preset = all_presets()[f"cifar100/{teacher}-{student}/dist-{variant}"]
            assert preset.method_published == published.get((teacher, student))
            cfg = preset.config()
            assert (cfg.distill.method, cfg.distill.temperature, cfg.distill.ce_weight) == ("dist", 4.0, 1.0)
            assert cfg.optim.lr == (0.01 if student in ("MobileNetV2", "ShuffleV1", "ShuffleV2") else 0.05)
        assert f"cifar100/{teacher}-{student}/dist-ls-vanilla" not in all_presets()


# ---------------------------------------------------------------------------------------------- CTKD

def test_the_curriculum_is_the_reference_cosine_decay():
    for epoch in range(15):  # the reference counts epochs from 1; the trainer from 0
        assert curriculum_strength(epoch, 0.0, 1.0, 10) == pytest.approx(-reference_cosine_decay(epoch + 1), abs=1e-12)
    assert curriculum_strength(0, 0.0, 1.0, 10) == pytest.approx((1 - math.cos(math.pi / 10)) / 2)
    assert curriculum_strength(9, 0.0, 1.0, 10) == 1.0 and curriculum_strength(50, 0.2, 0.7, 10) == 0.7
    assert curriculum_strength(0, 0.0, 0.5, 0) == 0.5  # no curriculum: the end strength throughout


def test_gradient_reversal_is_the_identity_forward_and_scales_by_minus_lambda_backward():
    x = torch.randn(5, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    y = reverse_gradient(x, 0.3)
    assert torch.equal(y, x)
    (y * torch.arange(5.0)).sum().backward()
    torch.testing.assert_close(x.grad, -0.3 * torch.arange(5.0))


def ctkd_module(epoch: int) -> CurriculumTemperature:
    cfg = load_config(StudentConfig, overrides=["distill.temperature=ctkd"]).distill
    module = CurriculumTemperature(cfg.ctkd)
    module.set_epoch(epoch)
    return module


@pytest.mark.parametrize("epoch", [0, 4, 12])
def test_kd_at_the_learned_temperature_matches_slow_reference(epoch):
    module = ctkd_module(epoch)
    lam = module.strength.item()
    s, t = logits(7, (6, 7)), logits(8, (6, 7), scale=6.0)
    s32 = s.clone().requires_grad_(True)
    tau = module(s32, t)
    assert tau.shape == () and tau.item() == pytest.approx(1 + 20 / (1 + math.exp(-1)), rel=1e-6)
    loss = kd_loss(s32, t, tau)
    loss.backward()
    s64 = s.double().requires_grad_(True)
    theta = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    ref = slow_kd(s64, t.double(), 1 + 20 * torch.sigmoid(theta))
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    torch.testing.assert_close(s32.grad.double(), s64.grad, rtol=1e-4, atol=1e-7)
    # the temperature ascends the loss: its gradient is the reference's, reversed and scaled by lambda
    assert module.theta.grad.item() == pytest.approx(-lam * theta.grad.item(), rel=1e-4, abs=1e-9)


def test_dkd_at_the_learned_temperature_matches_slow_reference():
    module = ctkd_module(20)
    s, t = logits(9, (6, 7)), logits(10, (6, 7), scale=6.0)
    labels = torch.tensor([0, 3, 6, 2, 2, 5])
    s32 = s.clone().requires_grad_(True)
    tckd, nckd = dkd_terms(s32, t, labels, module(s32, t))
    loss = 1.0 * tckd.mean() + 8.0 * nckd.mean()
    loss.backward()
    s64 = s.double().requires_grad_(True)
    theta = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    ref = slow_dkd(s64, t.double(), labels, 1 + 20 * torch.sigmoid(theta), 1.0, 8.0)
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-4)
    torch.testing.assert_close(s32.grad.double(), s64.grad, rtol=1e-3, atol=1e-7)
    assert module.theta.grad.item() == pytest.approx(-theta.grad.item(), rel=1e-3, abs=1e-9)  # lambda 1


@pytest.mark.parametrize("method", ["kd", "dkd"])
def test_the_objective_owns_the_temperature_as_state_and_logs_it(method):
    student, teacher = digits_pair()
    cfg = load_config(StudentConfig, overrides=[f"distill.method={method}", "distill.temperature=ctkd",
                                                 "distill.ctkd.curriculum_epochs=4"]).distill
    objective = create_distiller(cfg, student, teacher, DIGITS)
    assert objective.temperature is None  # the methods read softmax_temperature only
    assert [name for name, _ in objective.named_parameters()] == ["learned_temperature.theta"]
    assert [name for name in objective.state_dict() if "learned_temperature" in name] == ["learned_temperature.theta"]
    objective.set_epoch(1)
    assert objective.learned_temperature.strength.item() == pytest.approx(0.5)
    result = objective(student, digits_batch(), teacher)
    assert result.stats["temperature"].item() == pytest.approx(1 + 20 / (1 + math.exp(-1)), rel=1e-6)
    assert result.stats["ctkd_lambda"].item() == pytest.approx(0.5)
    sum(result.losses.values()).backward()
    assert objective.learned_temperature.theta.grad.abs().item() > 0


def test_only_the_methods_that_take_a_learned_temperature_accept_it():
    assert learned_temperature_methods() == ["kd", "dkd"]
    with pytest.raises(ConfigError, match="method 'mlkd' takes a fixed temperature only; the methods that take a "
                                          "learned one: kd, dkd"):
        load_config(StudentConfig, overrides=["distill.method=mlkd", "distill.temperature=ctkd"])
    with pytest.raises(ConfigError, match=r"distill.ctkd.curriculum_epochs must be >= 0, got -1"):
        load_config(StudentConfig, overrides=["distill.temperature=ctkd", "distill.ctkd.curriculum_epochs=-1"])
    with pytest.raises(ValueError, match="takes a fixed temperature only"):
        learned_temperature_recipe("ctkd", "crd")
    # a plain number stays the fixed temperature, and the section is there (and written) either way
    cfg = load_config(StudentConfig, overrides=["distill.temperature=3"])
    assert cfg.distill.temperature == 3.0 and cfg.distill.ctkd.temperature_range == 20.0


def test_ctkd_listing_recipe_and_presets():
    text = describe_methods()
    assert "ctkd (a learned temperature, not a method): Curriculum temperature (Li et al., AAAI 2023)" in text
    assert "distill.temperature=ctkd  with the methods kd, dkd" in text and "distill.ctkd.curriculum_epochs=10" in text
    assert "| `ctkd` | Curriculum temperature (Li et al., AAAI 2023)" in methods_table()
    recipe = learned_temperature_recipe("ctkd", "dkd", "resnet56", "resnet20")
    assert recipe["temperature"] == "ctkd" and recipe["dkd"]["nckd_weight"] == 2.0
    assert recipe["ctkd"] == {"min_temperature": 1.0, "temperature_range": 20.0, "lambda_min": 0.0,
                              "lambda_max": 1.0, "curriculum_epochs": 10}
    kd_published = {("resnet56", "resnet20"): 71.19, ("resnet110", "resnet32"): 73.52,
                    ("wrn_40_2", "wrn_16_2"): 75.45, ("wrn_40_2", "wrn_40_1"): 73.93, ("vgg13", "vgg8"): 73.52,
                    ("resnet32x4", "resnet8x4"): 73.39, ("resnet32x4", "ShuffleV2"): 75.37,
                    ("vgg13", "MobileNetV2"): 68.50, ("ResNet50", "MobileNetV2"): 68.67}
    for teacher, student, _ in CIFAR100_PAIRS:
        for variant in ("vanilla", "enriched"):
            kd = all_presets()[f"cifar100/{teacher}-{student}/kd-ctkd-{variant}"]
            dkd = all_presets()[f"cifar100/{teacher}-{student}/dkd-ctkd-{variant}"]
            assert kd.method_published == kd_published.get((teacher, student)) and dkd.method_published is None
            kd_cfg, dkd_cfg = kd.config(), dkd.config()
            assert (kd_cfg.distill.method, kd_cfg.distill.temperature, kd_cfg.distill.ce_weight,
                    kd_cfg.distill.kd_weight) == ("kd", "ctkd", 0.1, 0.9)
            assert (dkd_cfg.distill.method, dkd_cfg.distill.temperature) == ("dkd", "ctkd")
            preset = all_presets()[f"cifar100/{teacher}-{student}/dkd-{variant}"]
            assert dkd_cfg.distill.dkd == preset.config().distill.dkd


# ------------------------------------------------------------------------------ end to end, resume

@pytest.fixture(scope="module")
def teacher_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    cfg = load_config(TeacherConfig, base={**COMMON, "model": "digits_cnn", "views": 1, "intra": {"weight": 0.0}})
    train_teacher(cfg, out)
    return out / "checkpoints" / "last.pt"


@pytest.mark.parametrize(("method", "temperature", "terms"), [
    ("dist", "4", {"ce", "dist_inter", "dist_intra"}),
    ("kd", "ctkd", {"ce", "kd", "temperature", "ctkd_lambda"}),
    ("dkd", "ctkd", {"ce", "dkd", "temperature", "ctkd_lambda"}),
])
def test_one_epoch_on_digits(teacher_checkpoint, tmp_path, method, temperature, terms):
    cfg = load_config(StudentConfig, base={**COMMON, "model": "digits_cnn_small", "teacher": str(teacher_checkpoint)},
                      overrides=[f"distill.method={method}", f"distill.temperature={temperature}"])
    summary = distill(cfg, tmp_path)
    assert summary["epochs"] == 1 and 0 <= summary["final_acc"] <= 100
    (record,) = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert terms <= record.keys() and all(math.isfinite(record[k]) for k in terms)
    written = yaml.safe_load((tmp_path / "config.yaml").read_text())["distill"]
    assert written["method"] == method and written["ctkd"]["curriculum_epochs"] == 10
    if temperature == "ctkd":
        assert written["temperature"] == "ctkd"
        assert record["ctkd_lambda"] == pytest.approx((1 - math.cos(math.pi / 10)) / 2)
        theta = read_checkpoint(tmp_path / "checkpoints" / "last.pt")["objective"]["learned_temperature.theta"]
        assert theta.item() != 1.0  # trained by the student's optimiser


def test_a_ctkd_run_crashed_mid_epoch_resumes_exactly(teacher_checkpoint, tmp_path, monkeypatch):
    args = ["--teacher", str(teacher_checkpoint), "device=cpu", "data.dataset=digits", "data.train_per_class=50",
            "data.eval_per_class=20", "model=digits_cnn_small", "optim.epochs=2", "optim.milestones=[1]",
            "distill.temperature=ctkd", "distill.ctkd.curriculum_epochs=2", "checkpoint.every_steps=3"]
    assert main(["distill", "--out", str(tmp_path / "straight"), *args]) == 0
    # 7 steps an epoch: step 10 is in the second epoch (another lambda), after the checkpoint at step 9
    crash_then_resume(monkeypatch, "distill", tmp_path / "crashed", args, step=10)
    assert_same_run(tmp_path / "straight", tmp_path / "crashed")
    records = [json.loads(line) for line in (tmp_path / "crashed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["ctkd_lambda"] for r in records] == [pytest.approx(0.5), pytest.approx(1.0)]
