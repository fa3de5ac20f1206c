"""Logit methods: logit standardisation (Sun et al., CVPR 2024) in every KL term, and MLKD (Jin et
al., CVPR 2023), each against a slow float64 computation written from the paper's formulas."""

from __future__ import annotations

import math

import pytest
import torch

from intrakd.config import StudentConfig, load_config
from intrakd.data import Batch
from intrakd.losses import kd_loss, standardize_logits
from intrakd.losses.kd import STANDARDIZE_EPS
from intrakd.models import create_model
from intrakd.objectives import (
    TrainSetInfo,
    create_distiller,
    describe_methods,
    distill_recipe,
    logit_standardized_methods,
)
from intrakd.objectives.dkd import dkd_terms
from intrakd.presets import PRESETS


def slow_standardize(row: list[float]) -> list[float]:
    """The paper's Z-score: ``(z - mean) / std`` with ``std = sqrt(1/K sum (z_k - mean)^2)`` (+ eps)."""
    mean = sum(row) / len(row)
    std = math.sqrt(sum((v - mean) ** 2 for v in row) / len(row))
    return [(v - mean) / (std + STANDARDIZE_EPS) for v in row]


def slow_softmax(row: list[float], temp: float) -> list[float]:
    top = max(row)
    e = [math.exp((v - top) / temp) for v in row]
    return [v / sum(e) for v in e]


def slow_kd(s: torch.Tensor, t: torch.Tensor, temp: float, standardize: bool) -> float:
    total = 0.0
    for b in range(s.shape[0]):
        zs, zt = s[b].tolist(), t[b].tolist()
        if standardize:
            zs, zt = slow_standardize(zs), slow_standardize(zt)
        ps, pt = slow_softmax(zs, temp), slow_softmax(zt, temp)
        total += sum(q * math.log(q / r) for q, r in zip(pt, ps))
    return temp**2 * total / s.shape[0]


def slow_dkd(s: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, temp: float) -> tuple[list[float], list[float]]:
    """Per-sample TCKD and NCKD of the standardised logits, times ``T^2``."""
    tckd, nckd = [], []
    for b in range(s.shape[0]):
        ps = slow_softmax(slow_standardize(s[b].tolist()), temp)
        pt = slow_softmax(slow_standardize(t[b].tolist()), temp)
        y = int(labels[b])
        tckd.append(temp**2 * sum(q * math.log(q / r) for q, r in zip((pt[y], 1 - pt[y]), (ps[y], 1 - ps[y]))))
        others = [j for j in range(len(ps)) if j != y]
        qs = [ps[j] / (1 - ps[y]) for j in others]
        qt = [pt[j] / (1 - pt[y]) for j in others]
        nckd.append(temp**2 * sum(q * math.log(q / r) for q, r in zip(qt, qs)))
    return tckd, nckd


def logits(seed: int, shape: tuple[int, int] = (6, 10), scale: float = 3.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


# ------------------------------------------------------------------------------ logit standardisation

def test_standardize_matches_the_papers_z_score():
    z = logits(0, (5, 7)).double()
    expected = torch.tensor([slow_standardize(row) for row in z.tolist()], dtype=torch.float64)
    torch.testing.assert_close(standardize_logits(z), expected, rtol=1e-12, atol=1e-12)
    out = standardize_logits(z)
    torch.testing.assert_close(out.mean(dim=1), torch.zeros(5, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close((out**2).mean(dim=1), torch.ones(5, dtype=torch.float64), atol=1e-6, rtol=0)


@pytest.mark.parametrize("temp", [1.0, 2.0, 4.0])
def test_standardized_kd_matches_slow_reference(temp):
    s, t = logits(1), logits(2, scale=8.0)
    expected = slow_kd(s.double(), t.double(), temp, standardize=True)
    assert kd_loss(s, t, temp, standardize=True).item() == pytest.approx(expected, rel=1e-5)
    assert kd_loss(s.double(), t.double(), temp, standardize=True).item() == pytest.approx(expected, rel=1e-5)
    # the plain loss differs: the option changes what is computed
    assert kd_loss(s, t, temp).item() == pytest.approx(slow_kd(s.double(), t.double(), temp, False), rel=1e-5)
    assert abs(kd_loss(s, t, temp).item() - expected) > 1e-3


@pytest.mark.parametrize("temp", [2.0, 4.0])
def test_standardized_dkd_matches_slow_reference(temp):
    s, t = logits(3), logits(4, scale=6.0)
    labels = torch.tensor([0, 3, 9, 2, 2, 5])
    tckd, nckd = dkd_terms(s, t, labels, temp, standardize=True)
    ref_tckd, ref_nckd = slow_dkd(s.double(), t.double(), labels, temp)
    # computed in float32: small terms agree to float32 rounding
    torch.testing.assert_close(tckd.double(), torch.tensor(ref_tckd, dtype=torch.float64), rtol=1e-4, atol=2e-5)
    torch.testing.assert_close(nckd.double(), torch.tensor(ref_nckd, dtype=torch.float64), rtol=1e-4, atol=2e-5)


def test_standardized_terms_ignore_each_samples_shift_and_scale():
    s, t = logits(5), logits(6)
    labels = torch.tensor([1, 2, 3, 4, 5, 6])
    g = torch.Generator().manual_seed(7)
    shift_s, shift_t = torch.randn(6, 1, generator=g) * 10, torch.randn(6, 1, generator=g) * 10
    scale_s, scale_t = torch.rand(6, 1, generator=g) * 5 + 0.1, torch.rand(6, 1, generator=g) * 5 + 0.1
    s2, t2 = s * scale_s + shift_s, t * scale_t + shift_t
    torch.testing.assert_close(kd_loss(s2, t2, 2.0, standardize=True), kd_loss(s, t, 2.0, standardize=True),
                               rtol=1e-4, atol=1e-6)
    for new, old in zip(dkd_terms(s2, t2, labels, 2.0, True), dkd_terms(s, t, labels, 2.0, True)):
        torch.testing.assert_close(new, old, rtol=1e-4, atol=1e-6)
    # without standardisation a scaled student is a different student
    assert abs(kd_loss(s2, t2, 2.0).item() - kd_loss(s, t, 2.0).item()) > 1e-2


def test_standardized_terms_are_finite_on_constant_logits():
    assert torch.equal(standardize_logits(torch.full((3, 10), 2.0)), torch.zeros(3, 10))  # zero std: eps
    constant = torch.full((3, 10), 4.2, requires_grad=True)  # its float32 mean rounds: equal, finite rows
    standardized = standardize_logits(constant.detach())
    assert torch.isfinite(standardized).all() and (standardized == standardized[:, :1]).all()
    teacher = logits(8, (3, 10))
    loss = kd_loss(constant, teacher, 2.0, standardize=True)
    tckd, nckd = dkd_terms(constant, teacher, torch.tensor([0, 1, 2]), 2.0, standardize=True)
    (loss + tckd.sum() + nckd.sum()).backward()
    assert torch.isfinite(loss) and torch.isfinite(tckd).all() and torch.isfinite(nckd).all()
    assert torch.isfinite(constant.grad).all()
    # a constant teacher (uniform soft labels) too
    assert torch.isfinite(kd_loss(logits(9, (3, 10)), torch.zeros(3, 10), 2.0, standardize=True))


def digits_pair(seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(seed)
    return create_model("digits_cnn_small", num_classes=10), create_model("digits_cnn", num_classes=10).eval()


@pytest.mark.parametrize("method", ["kd", "dkd", "crd"])
def test_the_option_threads_from_config_to_the_terms(method):
    student, teacher = digits_pair()
    labels = torch.arange(24) % 10
    info = TrainSetInfo(10, labels, (1, 8, 8))
    images = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    batch = Batch((images,), labels[:8], torch.arange(8))
    results = {}
    for flag in (False, True):
        cfg = load_config(StudentConfig, overrides=[f"distill.method={method}", "distill.kd_weight=0.5",
                                                     "distill.crd.num_negatives=7",
                                                     f"distill.logit_standardize={str(flag).lower()}"])
        assert cfg.distill.logit_standardize is flag
        objective = create_distiller(cfg.distill, student, teacher, info)
        results[flag] = objective(student, batch, teacher).losses
    s, t = student(images).logits, teacher(images).logits
    for flag in (False, True):  # the KD term that any method may add
        torch.testing.assert_close(results[flag]["kd"], 0.5 * kd_loss(s, t, 4.0, standardize=flag))
    if method == "dkd":
        tckd, nckd = dkd_terms(s, t, batch.labels, 4.0, standardize=True)
        torch.testing.assert_close(results[True]["dkd"], (1.0 * tckd.mean() + 8.0 * nckd.mean()) / 20)
        assert not torch.allclose(results[True]["dkd"], results[False]["dkd"])


def test_logit_standardized_recipes_follow_the_reference_commands():
    assert logit_standardized_methods() == ["kd", "dkd"]
    kd = distill_recipe("kd", logit_standardize=True)
    assert (kd["ce_weight"], kd["kd_weight"], kd["temperature"], kd["logit_standardize"]) == (1.0, 9.0, 2.0, True)
    dkd = distill_recipe("dkd", "resnet56", "resnet20", logit_standardize=True)
    assert (dkd["ce_weight"], dkd["temperature"], dkd["dkd"]["tckd_weight"], dkd["dkd"]["nckd_weight"]) == \
        (1.0, 2.0, 9.0, 18.0)  # both DKD weights times 9 (nckd 2 for this pair)
    assert distill_recipe("kd") == {"method": "kd", "ce_weight": 0.1, "kd_weight": 0.9, "temperature": 4.0}
    with pytest.raises(ValueError, match="no logit-standardised recipe"):
        distill_recipe("crd", logit_standardize=True)
    for method in logit_standardized_methods():
        for variant in ("vanilla", "enriched"):
            cfg = PRESETS[f"cifar100/resnet32x4-resnet8x4/{method}-ls-{variant}"].config()
            assert cfg.distill.method == method and cfg.distill.logit_standardize
            assert cfg.distill.temperature == 2.0
    assert "cifar100/resnet32x4-resnet8x4/crd-ls-vanilla" not in PRESETS
    # without the option nothing changes for users: the default stays off
    assert load_config(StudentConfig).distill.logit_standardize is False


def test_methods_listing_shows_the_option_and_each_recipe():
    text = describe_methods()
    assert "distill.logit_standardize=False" in text
    assert "distill.ce_weight=1.0 distill.kd_weight=9.0 distill.temperature=2.0 distill.logit_standardize=True" in text
