"""``intra.weight=auto``: the gradient-balancing rule on constructed gradients with known answers, its
edge cases (nothing passes the gate, zero cross-entropy, bf16), the teacher objective's use of it, and
exact resume of a run with it. (Data-parallel agreement: tests/test_distributed.py.)"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from test_resume import assert_same_run, crash_then_resume
from torch import nn

from intrakd.cli import main
from intrakd.config import ConfigError, IntraConfig, TeacherConfig, load_config
from intrakd.data import Batch
from intrakd.losses.balance import (
    MAX_WEIGHT,
    MOMENTUM,
    GradientBalancedWeight,
    balanced_weight,
    squared_gradient_norm,
)
from intrakd.models import ModelOutput
from intrakd.objectives import IntraClassTeacherObjective
from intrakd.train import read_checkpoint


def run_rule(pairs: list[tuple[float, float]], target: float) -> list[float]:
    """Weights of successive steps given ``(main_norm, aux_norm)`` per step."""
    rule = GradientBalancedWeight(target)
    return [rule(torch.tensor(m * m), torch.tensor(a * a)).item() for m, a in pairs]


def test_constant_ratio_gives_target_times_ratio_from_the_first_step():
    # ||dCE|| = 3, ||dIntra|| = 0.5: ratio 6; bias correction makes the first step's average exact
    assert run_rule([(3.0, 0.5)] * 5, target=0.01) == pytest.approx([0.06] * 5, rel=1e-6)


def test_weight_is_the_bias_corrected_moving_average_of_the_ratio():
    ratios = [2.0, 4.0, 8.0]
    weights = run_rule([(r, 1.0) for r in ratios], target=0.1)
    average = 0.0
    for step, (r, w) in enumerate(zip(ratios, weights), start=1):
        average = MOMENTUM * average + (1 - MOMENTUM) * r
        assert w == pytest.approx(0.1 * average / (1 - MOMENTUM**step), rel=1e-6)


def test_balanced_gradient_is_the_target_fraction_of_the_main_gradient():
    # two losses of one tensor with known gradients: A = 2 * sum(e) (||dA|| = 2 sqrt(n)),
    # B = sum(e^2) / 2 (dB = e); lambda * ||dB|| must equal target * ||dA||
    e = torch.tensor([3.0, 4.0], requires_grad=True)
    a, b = 2 * e.sum(), 0.5 * (e**2).sum()
    weight = GradientBalancedWeight(0.2)(squared_gradient_norm(a, e), squared_gradient_norm(b, e))
    assert weight.item() == pytest.approx(0.2 * (2 * math.sqrt(2)) / 5.0, rel=1e-6)
    (grad_b,) = torch.autograd.grad(weight * b, e)
    assert grad_b.norm().item() == pytest.approx(0.2 * 2 * math.sqrt(2), rel=1e-6)


def test_steps_without_auxiliary_gradient_leave_the_state_unchanged():
    # the gate passes nothing on steps 1-2 (weight 0), then the ratio 5, then nothing again
    weights = run_rule([(3.0, 0.0), (3.0, 0.0), (5.0, 1.0), (3.0, 0.0)], target=0.1)
    assert weights == pytest.approx([0.0, 0.0, 0.5, 0.5], rel=1e-6)


def test_zero_cross_entropy_gives_weight_zero_and_large_ratios_are_bounded():
    assert run_rule([(0.0, 1.0)], target=0.1) == [0.0]
    assert run_rule([(1e10, 1e-5)], target=0.1) == [MAX_WEIGHT]


def test_non_finite_norms_are_skipped():
    weights = run_rule([(2.0, 1.0), (math.inf, 1.0), (math.nan, 1.0), (2.0, math.inf)], target=0.1)
    assert all(math.isfinite(w) for w in weights)
    assert weights == pytest.approx([0.2] * 4, rel=1e-6)


def test_pure_function_matches_the_module():
    weight, average, updates = balanced_weight(torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.long),
                                               torch.tensor(16.0), torch.tensor(4.0), target=0.5)
    assert (weight.item(), updates.item()) == (pytest.approx(1.0), 1)
    assert average.item() == pytest.approx((1 - MOMENTUM) * 2.0)


def test_squared_gradient_norm_is_zero_for_an_unrelated_loss_or_a_frozen_tensor():
    e, other = torch.ones(3, requires_grad=True), torch.ones(3, requires_grad=True)
    assert squared_gradient_norm(other.sum(), e).item() == 0.0
    assert squared_gradient_norm(other.sum(), torch.ones(3)).item() == 0.0


# ------------------------------------------------------------------------------------- the objective

class Fixed(nn.Module):
    """Embedding = input; logits = a linear map."""

    def __init__(self, dim: int = 4, classes: int = 3) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, classes)

    def forward(self, x):
        return ModelOutput(self.fc(x), x, (x,))


def two_views(seed: int = 0, n: int = 12, dim: int = 4, classes: int = 3) -> Batch:
    g = torch.Generator().manual_seed(seed)
    x1 = torch.randn(n, dim, generator=g)
    x2 = x1 + 0.1 * torch.randn(n, dim, generator=g)  # the embeddings are the inputs: they need gradients
    return Batch((x1.requires_grad_(), x2.requires_grad_()), torch.arange(n) % classes, torch.arange(n))


def test_objective_weight_balances_the_gradients_at_the_embedding():
    torch.manual_seed(0)
    model, b = Fixed(), two_views()
    objective = IntraClassTeacherObjective(IntraConfig(weight="auto", delta=None, cache=False, auto_ratio=0.3), 3, 4)
    result = objective(model, b)
    weight = result.stats["lambda"]
    # recompute both gradients at the embedding by hand
    x = torch.cat(b.views).requires_grad_(True)
    ce = F.cross_entropy(model.fc(x), b.labels.repeat(2))
    (g_ce,) = torch.autograd.grad(ce, x)
    intra = result.losses["intra"] / weight
    assert 0 < weight.item() < MAX_WEIGHT
    assert weight.item() == pytest.approx(0.3 * g_ce.norm().item() / _intra_grad_norm(model, b), rel=1e-4)
    assert intra.item() == pytest.approx(result.stats["intra_raw"].item(), rel=1e-5)


def _intra_grad_norm(model: nn.Module, b: Batch) -> float:
    """||d intra / d embedding|| of a fresh objective with lambda 1 (same loss, fixed weight)."""
    x = torch.cat(b.views).requires_grad_(True)
    fixed = IntraClassTeacherObjective(IntraConfig(weight=1.0, delta=None, cache=False), 3, 4)

    class FromX(nn.Module):
        def forward(self, _):
            return ModelOutput(model.fc(x), x, (x,))

    (g,) = torch.autograd.grad(fixed(FromX(), Batch((x[:12], x[12:]), b.labels, b.indices)).losses["intra"], x)
    return g.norm().item()


def test_objective_with_a_closed_gate_is_finite_and_leaves_lambda_at_zero():
    objective = IntraClassTeacherObjective(IntraConfig(weight="auto", delta=0.99, cache=False), 3, 4)
    result = objective(Fixed(), two_views())
    assert result.stats["pass_rate"].item() == 0.0
    assert result.stats["lambda"].item() == 0.0
    assert all(torch.isfinite(v) for v in result.losses.values())


def test_objective_under_bf16_autocast_is_finite_and_bounded():
    torch.manual_seed(0)
    model = Fixed()
    objective = IntraClassTeacherObjective(IntraConfig(weight="auto", delta=None), 3, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for seed in range(3):
            result = objective(model, two_views(seed))
            sum(result.losses.values()).backward()
    weight = result.stats["lambda"].item()
    assert math.isfinite(weight) and 0 < weight <= MAX_WEIGHT
    assert objective.balance.updates.item() == 3


def test_gradients_of_the_step_are_those_of_ce_plus_lambda_intra():
    """Measuring the norms must not change what the step's backward pass produces."""
    torch.manual_seed(0)
    model, b = Fixed(), two_views()
    objective = IntraClassTeacherObjective(IntraConfig(weight="auto", delta=None, cache=False), 3, 4)
    result = objective(model, b)
    sum(result.losses.values()).backward()
    auto_grad = model.fc.weight.grad.clone()
    model.zero_grad()
    fixed = IntraClassTeacherObjective(IntraConfig(weight=result.stats["lambda"].item(), delta=None, cache=False), 3, 4)
    sum(fixed(model, b).losses.values()).backward()
    torch.testing.assert_close(auto_grad, model.fc.weight.grad)


# ------------------------------------------------------------------------------------- configuration

def test_auto_is_accepted_and_checked():
    cfg = load_config(TeacherConfig, overrides=["intra.weight=auto", "intra.auto_ratio=0.2"])
    assert cfg.intra.weight == "auto" and cfg.intra.enabled and cfg.intra.auto_ratio == 0.2
    assert not load_config(TeacherConfig, overrides=["intra.weight=0"]).intra.enabled
    for bad, message in (("intra.weight=automatic", "intra.weight"), ("intra.auto_ratio=0", "auto_ratio must be > 0")):
        with pytest.raises(ConfigError, match=message):
            load_config(TeacherConfig, overrides=[bad])
    with pytest.raises(ConfigError, match="two views"):
        load_config(TeacherConfig, overrides=["intra.weight=auto", "views=1"])


# ------------------------------------------------------------------------------------------- resume

AUTO_TEACHER = ["data.dataset=digits", "model=digits_cnn_small", "optim.epochs=2", "optim.milestones=[1]",
                "intra.weight=auto", "device=cpu", "checkpoint.every_steps=5"]


@pytest.mark.slow
def test_auto_lambda_is_logged_saved_and_resumed_exactly(tmp_path, monkeypatch):
    assert main(["train-teacher", "--out", str(tmp_path / "straight"), *AUTO_TEACHER]) == 0

    crash_then_resume(monkeypatch, "train-teacher", tmp_path / "crashed", AUTO_TEACHER, step=30)
    assert_same_run(tmp_path / "straight", tmp_path / "crashed")
    state = read_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")["objective"]
    assert state["balance.updates"].item() > 0 and state["balance.average"].item() > 0
    records = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert all(0 < r["lambda"] <= MAX_WEIGHT for r in records)
